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


def test_mean_difference_takes_single_observations_as_in_the_readme(tiny, obs, obs_long):
    from nnsight_vla.steering import mean_difference

    torch.testing.assert_close(mean_difference(tiny, obs, obs_long, layer=0),
                               mean_difference(tiny, [obs], [obs_long], layer=0), rtol=0, atol=0)


def test_pi0_refuses_unknown_prediction_options(pi0):
    with pytest.raises(InputError, match="has no option 'temperature'; it takes seed="):
        pi0.predict_action(pi_obs(), temperature=0.5)
