"""Bad inputs to steering, observations and Pi0 get project errors; steering is scoped to its caller."""

import threading

import nnsight
import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import Add, Clamp, InputError, Observation, Scale, VLAError

from conftest import random_image

pytestmark = pytest.mark.xdist_group("hardening")  # one worker builds the module's fixtures

CLUSTER = [(1, 3), (1, 17)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Clamp(CLUSTER, float("nan")), "the clamp value must be finite"),
        (lambda: Clamp(CLUSTER, float("inf")), "the clamp value must be finite"),
        (lambda: Clamp(CLUSTER, "4"), "the clamp value must be a number, got '4'"),
        (lambda: Clamp(CLUSTER, True), "the clamp value must be a number"),
        (lambda: Scale(CLUSTER, -float("inf")), "the scale factor must be finite"),
        (lambda: Add(torch.tensor([1.0, float("nan")]), layer=0), "NaN or infinite"),
        (lambda: Add(torch.ones(2), layer=0, alpha=float("nan")), "alpha must be finite"),
        (lambda: Clamp(CLUSTER, 1.0, calls=[0.5]), r"calls=\[0.5\] is not one of"),
        (lambda: Clamp(CLUSTER, 1.0, calls=[-1]), "indices count from 0"),
    ],
)
def test_interventions_refuse_bad_values_at_construction(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_steering_that_could_never_act_is_refused(tiny, obs):
    before = tiny.predict_action(obs)
    with pytest.raises(InputError, match=r"calls=\[99\]: tower 'vlm' runs 7 time\(s\) per prediction"):
        with tiny.steer(Clamp(CLUSTER, 4.0, calls=[99])):
            pass
    with pytest.raises(InputError, match="no interventions given"):
        with tiny.steer([]):
            pass
    with pytest.raises(InputError, match="'clamp' is not an intervention"):
        with tiny.steer("clamp"):
            pass
    with pytest.raises(InputError, match="works inside an nnsight trace"):
        Clamp(CLUSTER, 4.0).apply(tiny)
    with pytest.raises(InputError, match="a layer must be an int, got 'a'"):
        tiny.layers["a"]
    np.testing.assert_array_equal(tiny.predict_action(obs), before)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny._module.modules())
    with tiny.steer(None):
        np.testing.assert_array_equal(tiny.predict_action(obs), before)


def test_non_finite_observations_are_refused():
    bad = torch.full((3, 8, 8), float("nan"))
    with pytest.raises(InputError, match="NaN or infinite"):
        Observation(bad, "go")
    with pytest.raises(InputError, match="state holds NaN"):
        Observation(random_image(0, 8), "go", state=[0.0, float("nan")])


def test_steering_applies_only_to_the_callers_predictions(tiny, obs):
    base = tiny.predict_action(obs)
    clamp = Clamp([(1, n) for n in range(0, 256, 3)], 8.0)
    with tiny.steer(clamp):
        steered = tiny.predict_action(obs)
    assert not np.array_equal(steered, base)
    results, errors = {}, []
    inside, outside = threading.Barrier(2), threading.Event()

    def steering_thread():
        try:
            with tiny.steer(clamp):
                inside.wait()
                results["steered"] = [tiny.predict_action(obs) for _ in range(3)]
                outside.wait(60)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    def plain_thread():
        try:
            inside.wait()
            results["plain"] = [tiny.predict_action(obs) for _ in range(3)]
        except Exception as err:  # pragma: no cover
            errors.append(err)
        finally:
            outside.set()

    threads = [threading.Thread(target=steering_thread), threading.Thread(target=plain_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for action in results["plain"]:
        np.testing.assert_array_equal(action, base)
    for action in results["steered"]:
        np.testing.assert_array_equal(action, steered)


def _traced(model, ob):
    """A steered prediction traced step by step (issue 28's reproduction)."""
    with model.predict_action(ob) as tracer:
        for step in tracer.iter[:7]:
            Clamp(CLUSTER, 6.0).apply(model, step)
        result = tracer.result.save()
    return np.asarray(result)


def _read(model, ob):
    with model.trace(ob):
        neurons = model.layers[1].mlp.down_proj.input.save()
    return neurons.detach().clone()


def test_threads_sharing_a_model_get_what_each_would_alone(tiny, obs, obs_long):
    """Traces, plain predictions, `steer` and `collect` in four threads at once: every
    result is bit-equal to the same call made alone."""
    site = nnsight_vla.Site(1, "neurons")
    jobs = {
        "traced": lambda: _traced(tiny, obs),
        "plain": lambda: tiny.predict_action(obs_long),
        "read": lambda: _read(tiny, obs_long),
        "collect": lambda: nnsight_vla.collect(tiny, [obs], [site], calls="actions", positions="last")[site],
    }

    def steered():
        with tiny.steer(Clamp(CLUSTER, 6.0)):
            return tiny.predict_action(obs_long)

    jobs["steer"] = steered
    alone = {name: job() for name, job in jobs.items()}
    assert not np.array_equal(alone["traced"], tiny.predict_action(obs))  # the trace does steer
    results, errors, start = {name: [] for name in jobs}, [], threading.Barrier(len(jobs))

    def run(name):
        try:
            start.wait()
            for _ in range(4):
                results[name].append(jobs[name]())
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    for name, got in results.items():
        assert len(got) == 4, name
        for value in got:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(alone[name]), err_msg=name)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny._module.modules())


def test_a_prediction_inside_a_trace_of_the_same_model_is_refused(tiny, obs):
    with pytest.raises(InputError, match="inside a running trace of the same model"):
        with tiny.trace(obs):
            tiny.predict_action(obs)
    assert tiny.predict_action(obs).shape == (7,)  # the model still works


def test_open_loop_refuses_what_it_cannot_score_and_takes_one_observation(tiny, obs, obs_long):
    from nnsight_vla.steering import open_loop

    clamp = Clamp(CLUSTER, 6.0)
    for kwargs, message in [
        (dict(steering={"c": clamp}, controls=0), "controls=0: .*needs at least 2"),
        (dict(steering={"c": clamp}, controls=1), "controls=1: .*needs at least 2"),
        (dict(steering={"c": clamp}, controls=True), "controls=True"),
        (dict(steering=[clamp]), "steering must be a dict {name: intervention}, got list"),
        (dict(steering={"c": "clamp"}), "'clamp' is not an intervention"),
        (dict(steering={"c": clamp}, observations=[]), "observations is empty"),
        (dict(steering={"c": clamp}, batch_size=0), "batch_size=0 must be a positive int"),
    ]:
        with pytest.raises(InputError, match=message):
            open_loop(tiny, kwargs.pop("observations", [obs]), progress=False, **kwargs)
    result = open_loop(tiny, obs, {"c": clamp}, controls=2, progress=False)
    np.testing.assert_array_equal(result.actions["baseline"][0], tiny.predict_action(obs))
    with tiny.steer(clamp):
        np.testing.assert_array_equal(result.actions["c"][0], tiny.predict_action(obs))
    assert all(np.isfinite(row["z"]) or row["random_std"] == 0 for row in result.table())
    batched = open_loop(tiny, [obs, obs_long, obs], {"c": clamp}, controls=2, batch_size=2, progress=False)
    alone = open_loop(tiny, [obs, obs_long, obs], {"c": clamp}, controls=2, progress=False)
    assert set(batched.actions) == set(alone.actions)
    for label, actions in alone.actions.items():  # the same action tokens, batched or not
        np.testing.assert_allclose(batched.actions[label], actions, atol=1e-6, err_msg=label)


@pytest.fixture(scope="module")
def pi0():
    return nnsight_vla.load("tiny-pi0")


def pi_obs():
    images = {"image": random_image(0, 64), "image2": random_image(1, 64)}
    return Observation(images, "pick up the black bowl", state=np.linspace(-1, 1, 8))


def test_pi0_options_and_sites(pi0):
    obs = pi_obs()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="num_steps must be a positive int"):
            pi0.predict_action(obs, num_steps=bad)
    for bad in ("3", 1.5, True):
        with pytest.raises(InputError, match="seed must be an int"):
            pi0.predict_action(obs, seed=bad)
    np.testing.assert_array_equal(pi0.predict_action(obs, seed=np.int64(3)), pi0.predict_action(obs, seed=3))
    with pytest.raises(InputError, match=r"steps=\[42\]: tower 'expert' runs 10 time\(s\)"):
        with pi0.steer(Clamp([(1, 3)], 4.0, tower="expert", steps=[42])):
            pass
    with pytest.raises(InputError, match="lm_head never runs in this model's predictions"):
        with pi0.trace(obs):
            pi0.lm_head.output.save()
    with pytest.raises(VLAError):
        pi0.predict_action({"observation.images.image": torch.full((3, 64, 64), float("nan")),
                            "observation.images.image2": torch.zeros(3, 64, 64),
                            "observation.state": torch.zeros(8), "task": "go"})
    with pytest.raises(AttributeError, match="use model.spec.camera_names") as caught:
        pi0.camera_names
    assert isinstance(caught.value, VLAError) and pi0.spec.camera_names == ("image", "image2")
    assert not hasattr(pi0, "no_such_name")


def test_mean_difference_takes_single_observations_as_in_the_readme(tiny, obs, obs_long):
    from nnsight_vla.steering import mean_difference

    torch.testing.assert_close(mean_difference(tiny, obs, obs_long, layer=0),
                               mean_difference(tiny, [obs], [obs_long], layer=0), rtol=0, atol=0)


def test_pi0_refuses_unknown_prediction_options(pi0):
    with pytest.raises(InputError, match="has no option 'temperature'; it takes seed="):
        pi0.predict_action(pi_obs(), temperature=0.5)
