"""Episode metrics on scripted trajectories and paired statistics, against hand-computed values."""

import numpy as np
import pytest

from nnsight_vla import InputError
from nnsight_vla.eval import episode_metrics, paired_comparison
from nnsight_vla.eval.stats import versus_random


def test_scripted_trajectory():
    # up 0.3 m in z, then 0.4 m along x, then back down 0.1 m, at 10 Hz
    path = [[0, 0, 1.0], [0, 0, 1.3], [0.4, 0, 1.3], [0.4, 0, 1.2]]
    m = episode_metrics(path, success=True, control_hz=10.0)
    assert m.length == 3 and m.success
    assert m.path_length == pytest.approx(0.8)
    assert m.axis_displacement == pytest.approx({"x": 0.4, "y": 0.0, "z": 0.4})
    assert m.net_displacement == pytest.approx({"x": 0.4, "y": 0.0, "z": 0.2})
    assert m.displacement_per_step == pytest.approx(0.8 / 3) and m.z_displacement == pytest.approx(0.2)
    assert m.mean_speed == pytest.approx(0.8 / 3 * 10) and m.max_speed == pytest.approx(4.0)
    assert m.min_height == pytest.approx(1.0)
    assert m.to_dict()["axis_displacement"]["x"] == pytest.approx(0.4)


def test_still_and_bad_paths():
    m = episode_metrics([[0.1, 0.2, 0.3]], success=False)
    assert (m.length, m.path_length, m.max_speed, m.min_height) == (0, 0.0, 0.0, 0.3)
    with pytest.raises(InputError, match=r"\[T, 3\]"):
        episode_metrics(np.zeros((4, 2)), success=True)
    with pytest.raises(InputError, match="control_hz"):
        episode_metrics(np.zeros((4, 3)), success=True, control_hz=0)


def test_paired_comparison_by_hand():
    base = np.array([1.0, 2.0, 3.0, 4.0])
    treated = base + np.array([1.0, 2.0, 3.0, 4.0])  # differences 1, 2, 3, 4
    c = paired_comparison(base, treated, n_boot=20_000)
    assert c.n == 4 and c.mean_difference == pytest.approx(2.5)
    sd = np.sqrt(((np.array([1, 2, 3, 4]) - 2.5) ** 2).sum() / 3)  # 1.2910
    assert c.effect_size == pytest.approx(2.5 / sd)
    assert c.t_pvalue == pytest.approx(0.03047, abs=2e-4)  # t = 3.873 with 3 degrees of freedom
    assert c.wilcoxon_pvalue == pytest.approx(0.125)  # exact: 2 x (1/2)^4
    assert 1.0 <= c.ci_low < 2.5 < c.ci_high <= 4.0
    same = paired_comparison(base, base)
    assert (same.mean_difference, same.t_pvalue, same.wilcoxon_pvalue, same.effect_size) == (0.0, 1.0, 1.0, 0.0)


def test_paired_comparison_bad_inputs():
    with pytest.raises(InputError, match="one length"):
        paired_comparison([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="at least 2"):
        paired_comparison([1.0], [2.0])
    with pytest.raises(InputError, match="confidence"):
        paired_comparison([1, 2], [2, 3], confidence=1.5)


def test_a_steering_is_scored_against_its_random_controls():
    """shift = mean(steered - baseline) over intact pairs; z against the controls' shifts (ddof=1)."""
    values = {"baseline": [0.0, 0.1], "up": [0.5, 0.4], "up/random0": [0.1, 0.1],
              "up/random1": [0.0, 0.2], "up/random2": [-0.1, 0.3]}

    def row(condition, episode, z, error=None):
        return {"task": 0, "episode": episode, "condition": condition, "success": False, "z_displacement": z,
                **{m: 0.0 for m in ("length", "path_length", "displacement_per_step", "mean_speed", "max_speed",
                                    "min_height")}, "error": error}

    rows = [row(c, e, z) for c, zs in values.items() for e, z in enumerate(zs)]
    scored = versus_random(rows, {"up": ["up/random0", "up/random1", "up/random2"]})["up"]["z_displacement"]
    # each control's mean shift: (0.1 + 0.0) / 2, (0.0 + 0.1) / 2, (-0.1 + 0.2) / 2 = 0.05
    assert scored["shift"] == pytest.approx(0.4) and scored["random_mean"] == pytest.approx(0.05)
    assert scored["random_std"] < 1e-12 and scored["z"] == np.inf and scored["controls"] == 3
    rows[-1] = row("up/random2", 1, 0.5)  # now the controls' shifts are 0.05, 0.05, 0.15
    scored = versus_random(rows, {"up": ["up/random0", "up/random1", "up/random2"]})["up"]["z_displacement"]
    std = np.std([0.05, 0.05, 0.15], ddof=1)
    assert scored["z"] == pytest.approx((0.4 - 0.25 / 3) / std)
    rows[2] = row("up", 0, 9.0, error={"type": "RuntimeError"})  # a failed pair is left out of the shift
    scored = versus_random(rows, {"up": ["up/random0", "up/random1", "up/random2"]})["up"]
    assert scored["z_displacement"]["shift"] == pytest.approx(0.3) and scored["z_displacement"]["pairs"] == 1
    assert scored["success"]["pairs"] == 2 and scored["success"]["shift"] == 0.0
    assert versus_random(rows, {"up": ["up/random0"]})["up"]["z_displacement"]["z"] != \
        versus_random(rows, {"up": ["up/random0"]})["up"]["z_displacement"]["z"]  # one control: NaN
