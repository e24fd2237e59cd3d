"""One vocabulary for "when": the calls and positions parsers on every spelling, each family's
schedule, and collect and Clamp agreeing on what a spelling means, bit for bit."""

import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import Clamp, InputError, Site, collect
from nnsight_vla.schedule import Calls, Positions, TowerSchedule
from nnsight_vla.testing.contract import example_observation

DECODER = TowerSchedule("vlm", forwards=7, runs=None, actions=range(7), denoising=False)
PREFIX_ONLY = TowerSchedule("vlm", forwards=1, runs=1, actions=None, denoising=False)
EXPERT = TowerSchedule("expert", forwards=10, runs=None, actions=range(10), denoising=True)
VARYING = TowerSchedule("vlm", forwards=None, runs=None, actions=None, denoising=False)


@pytest.mark.parametrize("spelling, tower, resolved", [
    ("all", DECODER, None), ("prefill", DECODER, (0,)), ("actions", DECODER, tuple(range(7))),
    ("actions", EXPERT, tuple(range(10))), (3, DECODER, (3,)), (np.int64(3), DECODER, (3,)),
    ([4, 1, 4], DECODER, (1, 4)), ((0, 2), EXPERT, (0, 2)), (range(2, 4), DECODER, (2, 3)),
    (slice(0, 3), DECODER, (0, 1, 2)), (slice(2, None), DECODER, (2, 3, 4, 5, 6)),
    (slice(None, None, 3), EXPERT, (0, 3, 6, 9)), (slice(1, 4), VARYING, (1, 2, 3)),
    (Calls("prefill"), PREFIX_ONLY, (0,)),
])
def test_every_calls_spelling(spelling, tower, resolved):
    assert Calls.parse(spelling).resolve(tower) == resolved


@pytest.mark.parametrize("spelling, tower, message", [
    ("some", DECODER, "calls='some' is not one of"), (0.5, DECODER, "is not one of"), ([True], DECODER, "is not one of"),
    ([], DECODER, "is empty"), ([-1], DECODER, "indices count from 0"), (slice(-1, 2), DECODER, "non-negative"),
    (slice(0, 4, 0), DECODER, "step >= 1"), (slice(1, None), VARYING, "give the slice an end"),
    ("actions", PREFIX_ONLY, "no forward of tower 'vlm' emits actions"),
    ("prefill", EXPERT, "has no prefill call"),
])
def test_calls_refused_by_name(spelling, tower, message):
    with pytest.raises(InputError, match=message):
        Calls.parse(spelling).resolve(tower)


@pytest.mark.parametrize("spelling, first, later", [
    ("all", list(range(5)), list(range(5))), ("last", [4], [4]), ("prefix", list(range(5)), []),
    (-2, [3], [3]), ([0, -1], [0, 4], [0, 4]), ((1,), [1], [1]), (Positions("last"), [4], [4]),
])
def test_every_positions_spelling(spelling, first, later):
    positions = Positions.parse(spelling)
    x = torch.arange(5.0).reshape(1, 5, 1)
    for call, expected in ((0, first), (1, later)):
        assert positions.select(x, call)[0, :, 0].tolist() == expected
        index = positions.index(5, call)
        assert (list(range(5)) if index is None else index.tolist()) == expected
    assert Positions.parse("mean").select(x, 0).item() == 2.0


@pytest.mark.parametrize("spelling, message", [
    ("first", "positions='first' is not one of"), ([], "is empty"), ([0.5], "is not one of"), ("mean", "a write needs"),
    ([7], r"positions \[7\] are out of range: this observation's sequence has 5 positions at forward 0"),
])
def test_positions_refused_by_name(spelling, message):
    with pytest.raises(InputError, match=message):
        Positions.parse(spelling).index(5, 0)


def test_writing_refuses_the_mean_and_two_names_for_the_calls():
    with pytest.raises(InputError, match="positions='mean' averages positions when reading"):
        Clamp([(0, 1)], 1.0, positions="mean")
    with pytest.raises(InputError, match="give one of them"):
        Clamp([(0, 1)], 1.0, calls=[0], steps=[0])


FAMILIES = ["tiny-openvla", "tiny-pi0", "tiny-pi0_fast", "tiny-smolvla", "tiny-xvla"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model = nnsight_vla.load(request.param)
    schedule = model.schedule()
    tower = next(name for name, t in schedule.towers.items() if t.actions is not None)
    return model, tower, schedule[tower]


def test_a_schedule_says_what_each_family_runs(family):
    model, tower, schedule = family
    assert schedule.actions == model.action_calls(tower) and schedule.forwards == model.calls_per_prediction(tower)
    assert schedule.denoising == (tower != "vlm")
    assert model.schedule().steps == max(t.forwards for t in model.schedule().towers.values())


def test_collect_reads_every_spelling_of_the_same_calls_and_positions_alike(family):
    model, tower, schedule = family
    obs, site = example_observation(model), Site(0, "resid", tower)
    n = len(schedule.actions)
    options = {} if tower == "vlm" else {"seed": 0}

    def read(calls, positions="last"):
        return collect(model, obs, site, calls=calls, positions=positions, **options)[site]

    reference = read(list(range(n)))  # the old keyword form: call indices
    for spelling in ("actions", slice(0, n), range(n), tuple(range(n - 1, -1, -1))):
        assert torch.equal(read(spelling), reference), spelling
    assert torch.equal(read([0]), read(0)) and torch.equal(read(0, -1), read(0, "last"))


@pytest.mark.filterwarnings("ignore::nnsight_vla_lerobot.pi0_fast.FastDecodingWarning")  # a clamp at 50 garbles FAST
def test_clamp_writes_every_spelling_of_the_same_calls_and_positions_alike(family):
    model, tower, schedule = family
    obs, n = example_observation(model), len(schedule.actions)
    cluster = [(0, k) for k in range(8)]
    options = {} if tower == "vlm" else {"seed": 0}

    def steered(**where):
        with model.steer(Clamp(cluster, 50.0, tower=tower, **where)):
            return model.predict_action(obs, **options)

    reference = steered(calls=list(range(n)))  # the old keyword form
    assert not np.array_equal(reference, model.predict_action(obs, **options))  # the clamp acts
    spellings = [{"calls": "actions"}, {"calls": slice(0, n)}, {"calls": range(n)}]
    if schedule.denoising:
        spellings += [{"steps": list(range(n))}, {"steps": "actions"}, {"steps": slice(0, None)}]
    for where in spellings:
        np.testing.assert_array_equal(steered(**where), reference, err_msg=str(where))
    np.testing.assert_array_equal(steered(calls=[1], positions=[-1]), steered(calls=1, positions="last"))
    if not schedule.denoising:
        np.testing.assert_array_equal(steered(calls="prefill"), steered(calls=0))
