"""Probes against ground truth planted by construction: linear relations, leakage, classes."""

import numpy as np
import pandas as pd
import pytest
import torch

from nnsight_vla.errors import InputError
from nnsight_vla.probes.fit import _Plan, episode_folds, episode_shuffle, fit_probes
from nnsight_vla.probes.report import ProbeResults
from nnsight_vla.sites import Site

pytestmark = pytest.mark.xdist_group("probes_fit")  # one worker builds the module's fixtures

EPISODES, STEPS, WIDTH, WIDE = 40, 50, 16, 64  # WIDE > EPISODES: offsets can be memorised
PLANTED, SCALED, NOISE, OFFSETS = Site(2), Site(3), Site(4), Site(5)


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def overlaps(row) -> bool:
    return row.score_low <= row.chance_high and row.chance_low <= row.score_high


@pytest.fixture(scope="module")
def data():
    """Rows of 40 episodes x 50 steps; a target planted along ``u``, and one constant per episode.

    2000 rows for 16 columns: the readout's estimation error is about sqrt(16/2000) of its norm,
    so its cosine with the truth is about 0.996.
    """
    rng = np.random.default_rng(0)
    n = EPISODES * STEPS
    episodes = np.repeat(np.arange(EPISODES), STEPS)
    u = rng.normal(size=WIDTH)
    u /= np.linalg.norm(u)
    y = rng.normal(size=n)
    planted = rng.normal(size=(n, WIDTH)) + 20 * y[:, None] * u  # R² of the best readout: 400/401
    scales = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), WIDTH))  # columns 4 decades apart
    per_episode = rng.normal(size=EPISODES)[episodes]  # constant within an episode, random across
    offsets = 3 * rng.normal(size=(EPISODES, WIDE))[episodes] + rng.normal(size=(n, WIDE))
    features = {
        (PLANTED, 0): planted.astype(np.float32),
        (SCALED, 0): (planted * scales).astype(np.float32),
        (NOISE, 0): rng.normal(size=(n, WIDTH)).astype(np.float32),
        (OFFSETS, 0): offsets.astype(np.float32),
    }
    targets = {"action[0]": y, "episode value": per_episode}
    return features, targets, episodes, u, scales


@pytest.fixture(scope="module")
def fitted(data):
    features, targets, episodes, _, _ = data
    return fit_probes(features, targets, episodes, shuffles=3, progress=False)


def row(results, site, target):
    table = results.table
    found = table[(table.layer == site.layer) & (table.target == target)]
    assert len(found) == 1
    return found.iloc[0]


def test_planted_relation_is_recovered_and_noise_is_at_chance(data, fitted):
    planted = row(fitted, PLANTED, "action[0]")
    assert planted.task == "regression" and planted.metric == "r2"
    assert planted.score >= 0.99 and planted.score_low >= 0.99
    assert planted.chance < 0.05 and not overlaps(planted)
    noise = row(fitted, NOISE, "action[0]")
    assert noise.score < 0.05 and overlaps(noise)
    assert list(fitted.table.columns)[:16] == [
        "tower",
        "kind",
        "layer",
        "call",
        "target",
        "task",
        "metric",
        "score",
        "score_low",
        "score_high",
        "chance",
        "chance_low",
        "chance_high",
        "alpha",
        "rows",
        "episodes",
    ]
    assert (fitted.table.rows == EPISODES * STEPS).all() and (
        fitted.table.episodes == EPISODES
    ).all()


def test_direction_is_the_planted_readout_in_raw_activation_space(data, fitted):
    _, _, _, u, scales = data
    d = fitted.direction(PLANTED, "action[0]")
    assert d.dtype == torch.float32 and d.shape == (WIDTH,)
    assert cosine(d, u) >= 0.99  # isotropic noise: the best readout is u itself
    # Column j scaled by s_j: the same readout needs weight u_j / s_j in the raw columns.
    scaled = fitted.direction(SCALED, "action[0]", call=0)
    assert cosine(scaled, u / scales) >= 0.99
    # The test can fail: the standardised weight (no mapping back) points elsewhere.
    x = data[0][(SCALED, 0)]
    assert cosine(scaled.numpy() * x.std(0), u / scales) < 0.5
    assert row(fitted, SCALED, "action[0]").score >= 0.99


def test_episode_constant_target_does_not_leak(data, fitted):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, targets, _, _, _ = data
    leak = row(fitted, OFFSETS, "episode value")
    assert leak.score < 0.1 and overlaps(leak)
    # Folds split by frame put every episode's offset in the training rows: the probe
    # memorises offsets and scores far above chance, so this test would catch such folds.
    by_frame = cross_val_score(
        make_pipeline(StandardScaler(), Ridge(1.0)),
        features[(OFFSETS, 0)],
        targets["episode value"],
        cv=KFold(5, shuffle=True, random_state=0),
    )
    assert by_frame.mean() > 0.8 and by_frame.mean() > leak.chance_high + 0.5
    # The same through fit_probes, told that every frame is its own episode.
    frames = np.arange(len(targets["episode value"]))
    x = {(OFFSETS, 0): features[(OFFSETS, 0)]}
    split = fit_probes(x, {"v": targets["episode value"]}, frames, shuffles=1, progress=False)
    assert split.table.score[0] > 0.8


def test_ridge_equals_sklearn_nested_cross_validation(data):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, targets, episodes, _, _ = data
    noise = features[(NOISE, 0)]
    y, alphas = targets["action[0]"] + 0.5 * noise[:, 0], [100.0, 10.0, 1.0, 0.1]
    # Columns of very different scales, a constant one (StandardScaler's scale: 1), a tiny one.
    x = np.column_stack(
        [features[(SCALED, 0)], np.full(len(y), 3.5, np.float32), 1e-6 * noise[:, 1]]
    )
    res = fit_probes(
        {(SCALED, 0): x}, {"y": y}, episodes, alphas=alphas, shuffles=0, progress=False
    )
    search = GridSearchCV(
        make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": alphas}, cv=GroupKFold(3)
    )
    reference = cross_val_score(
        search,
        x.astype(np.float64),
        y,
        groups=episodes,
        cv=GroupKFold(5),
        params={"groups": episodes},
    )
    assert abs(res.table.score[0] - reference.mean()) < 1e-9
    assert np.isnan(res.table.chance[0])
    final = search.fit(x.astype(np.float64), y, groups=episodes)
    assert res.table.alpha[0] == final.best_params_["ridge__alpha"]
    weights = final.best_estimator_[-1].coef_ / final.best_estimator_[0].scale_
    assert np.allclose(
        res.direction(SCALED, "y").numpy(), weights, rtol=1e-4, atol=1e-6 * np.abs(weights).max()
    )


def test_planted_gripper_is_classified():
    rng = np.random.default_rng(1)
    episodes = np.repeat(np.arange(30), STEPS)
    closes = rng.integers(5, 15, 30)[episodes]  # each episode closes the gripper at its own step
    step = np.tile(np.arange(STEPS), 30)
    gripper = np.where(step >= closes, 1.0, -1.0)  # floats -1/1: inferred to be classes
    u = rng.normal(size=16)
    u /= np.linalg.norm(u)
    x = (rng.normal(size=(len(episodes), 16)) + 3 * gripper[:, None] * u).astype(np.float32)
    res = fit_probes(
        {(Site(0, "neurons", "expert"), 4): x},
        {"gripper": gripper},
        episodes,
        folds=4,
        inner_folds=2,
        alphas=[10.0, 0.1],
        shuffles=1,
        progress=False,
    )
    got = res.table.iloc[0]
    assert got.task == "classification" and got.metric == "balanced_accuracy"
    assert (got.tower, got.kind, got.layer, got.call) == ("expert", "neurons", 0, 4)
    assert got.score >= 0.95 and got.score_low > got.chance_high
    # Every episode closes the gripper between steps 5 and 14: another episode's gripper
    # sequence agrees with this one on most steps, so chance is high (about 0.83), not 0.5.
    assert 0.6 < got.chance < 0.95
    direction = res.direction(Site(0, "neurons", "expert"), "gripper")  # logit of class 1.0
    assert cosine(direction, u) >= 0.95
    assert torch.equal(
        res.direction(Site(0, "neurons", "expert"), "gripper", label=-1.0), -direction
    )


def test_multiclass_direction_needs_a_label():
    rng = np.random.default_rng(2)
    episodes = np.repeat(np.arange(12), 10)
    task = np.array(["bowl", "plate", "drawer"])[rng.permutation(12) % 3][episodes]
    means = {name: 4 * rng.normal(size=8) for name in ("bowl", "plate", "drawer")}
    x = (rng.normal(size=(len(task), 8)) + np.stack([means[t] for t in task])).astype(np.float32)
    res = fit_probes(
        {(Site(1), 0): x},
        {"task": task},
        episodes,
        folds=3,
        inner_folds=2,
        alphas=[1.0],
        shuffles=1,
        progress=False,
    )
    assert res.table.score[0] >= 0.95
    with pytest.raises(InputError, match="label="):
        res.direction(Site(1), "task")
    assert res.direction("vlm.1.resid", "task", label="plate").shape == (8,)


def test_classes_by_episode_are_stratified_across_folds():
    # task = episode % 3: GroupKFold deals episodes 8, 7, 6, 5, ... round the folds, so each
    # outer test fold holds one task and its training set the other two (the held-out task is
    # never seen: balanced accuracy 0); with inner_folds=2 an inner training set has one task
    # and the fit stopped with an InputError. StratifiedGroupKFold puts one episode of each
    # task in every outer fold.
    rng = np.random.default_rng(3)
    episodes = np.repeat(np.arange(9), 20)
    task = episodes % 3
    x = (rng.normal(size=(len(task), 8)) + 3 * np.eye(8)[task]).astype(np.float32)
    grouped = episode_folds(episodes, 3)
    assert [len(np.unique(task[te])) for _, te in grouped] == [1, 1, 1]  # the old folds
    for inner_folds in (2, 3):
        res = fit_probes(
            {(Site(1), 0): x},
            {"task": task},
            episodes,
            folds=3,
            inner_folds=inner_folds,
            alphas=[1.0],
            shuffles=1,
            progress=False,
        )
        assert res.table.score[0] >= 0.95 and res.table.score_low[0] > res.table.chance_high[0]
    # The splits fit_probes uses, for the target and for a shuffle of it: whole episodes.
    plan = _Plan.make(episodes, 3, 2, (1.0,), 1, 0)
    for y in (task, task[plan.sources[0]]):
        outer, final = plan.splits(y)
        assert len(outer) == 3 and sorted(np.concatenate([te for _, te, _ in outer])) == list(
            range(len(y))
        )
        for train, test, inner in outer:
            assert not set(episodes[train]) & set(episodes[test])
            assert len(np.unique(y[train])) == 3 and len(np.unique(y[test])) == 3
            assert sorted(np.concatenate(inner)) == list(train)
            for v in inner:
                rest = np.setdiff1d(train, v)
                assert not set(episodes[v]) & set(episodes[rest])
                assert len(np.unique(y[rest])) >= 2
        assert sorted(np.concatenate(final)) == list(range(len(y)))
    # Regression targets keep GroupKFold.
    plain = [(tr, te) for tr, te, _ in plan.outer]
    assert all((a == c).all() and (b == d).all() for (a, b), (c, d) in zip(plain, grouped))


def test_episode_shuffle_moves_whole_episodes():
    episodes = np.repeat([5, 3, 9, 7], [4, 4, 2, 4])
    y = np.arange(len(episodes))
    src = episode_shuffle(episodes, np.random.default_rng(0))
    for e in np.unique(episodes):
        rows = np.flatnonzero(episodes == e)
        donors = np.unique(episodes[src[rows]])
        assert len(donors) == 1 and donors[0] != e  # one other episode's targets, never its own
        assert (np.diff(y[src[rows]]) >= 0).all()  # in that episode's time order


def nan_where(mask, values):
    return np.where(mask, np.nan, values)


BAD_INPUTS = {  # what to change in good inputs (x, y, episodes) -> the message's fix
    "episodes short": (lambda x, y, e: ({(NOISE, 0): x}, {"y": y}, e[:-1], None), "\\[1999 rows"),
    "target short": (
        lambda x, y, e: ({(NOISE, 0): x}, {"y": y[:-1]}, e, None),
        "one value per row",
    ),
    "few episodes": (lambda x, y, e: ({(NOISE, 0): x}, {"y": y}, e % 3, None), "folds<=3"),
    "one episode": (lambda x, y, e: ({(NOISE, 0): x}, {"y": y}, 0 * e, None),
                    r"rows come from 1 episode\(s\); .*need at least 2 \(folds >= 2\)\. Collect more episodes"),
    "constant": (lambda x, y, e: ({(NOISE, 0): x}, {"y": 0 * y}, e, None), "constant; drop it"),
    "NaN feature": (
        lambda x, y, e: ({(NOISE, 0): nan_where(e[:, None] == 0, x)}, {"y": y}, e, None),
        "NaN or inf; drop or fill",
    ),
    "NaN target": (
        lambda x, y, e: ({(NOISE, 0): x}, {"y": nan_where(e == 1, y)}, e, None),
        "NaN or inf; drop those rows",
    ),
    "unknown task": (
        lambda x, y, e: ({(NOISE, 0): x}, {"y": y}, e, {"y": "ranking"}),
        "not one of",
    ),
    "bare site key": (lambda x, y, e: ({NOISE: x}, {"y": y}, e, None), "not \\(Site, call\\)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_name_the_fix(data, case):
    features, targets, episodes, _, _ = data
    change, message = BAD_INPUTS[case]
    x, y, e, tasks = change(features[(NOISE, 0)], targets["action[0]"], episodes)
    with pytest.raises(InputError, match=message):
        fit_probes(x, y, e, tasks=tasks, progress=False)


def test_save_load_round_trip(fitted, tmp_path):
    folder = fitted.save(tmp_path / "probes")
    assert {p.name for p in folder.iterdir()} >= {"probes.csv", "probes.json", "probes.png"}
    assert (folder / "probes.png").stat().st_size > 10_000
    loaded = ProbeResults.load(folder)
    pd.testing.assert_frame_equal(loaded.table, fitted.table)
    assert loaded.settings == fitted.settings
    with pytest.raises(InputError, match="refit"):
        loaded.direction(PLANTED, "action[0]")
