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


def test_the_rank_p_value_counts_controls_at_least_as_far_on_the_tested_side():
    from nnsight_vla.steering.controls import z_against, z_score

    controls = [0.1, 0.3, 0.5, 0.5, -0.2, 0.0, 0.7, 0.2, 0.4]  # N = 9: p = (1 + k) / 10
    assert z_against(0.5, controls).p == pytest.approx(4 / 10)  # 0.5, 0.5 (ties count) and 0.7
    assert z_against(0.8, controls).p == pytest.approx(1 / 10) == z_against(0.8, controls).p_min  # none beyond
    assert z_against(-0.2, controls, side=-1).p == pytest.approx(2 / 10)  # -0.2 itself
    assert z_against(-0.5, controls, side=-1).p == pytest.approx(1 / 10)
    assert z_against(0.8, controls, side=-1).p == pytest.approx(10 / 10)  # the wrong way: every control is beyond
    # two-sided: |c - mean| >= |shift - mean|, mean 0.2777...
    mean = np.mean(controls)
    far = sum(abs(c - mean) >= abs(-0.3 - mean) for c in controls)
    assert z_against(-0.3, controls, side=0).p == pytest.approx((1 + far) / 10) and far == 0
    nan_kept_out = z_against(0.8, [*controls, float("nan"), float("inf")])
    assert nan_kept_out.n == 9 and nan_kept_out.p == pytest.approx(0.1)
    alike = z_against(0.0, [0.0] * 99)  # a steering that moves nothing, among controls that move nothing
    assert alike.p == 1.0 and alike.p_min == pytest.approx(0.01) and alike.z == 0.0
    # the same shift everywhere, whose mean rounds one ulp away (mini-openvla's up_40@8 cell)
    same = 0.996078431372549
    assert np.mean([same] * 99) != same and z_against(same, [same] * 99).z == 0.0
    assert z_against(same + 1e-3, [same] * 99).z == np.inf
    # a stored row (shift, mean, sd, N) rescored by the same rules
    assert z_score(same, np.mean([same] * 99), 1.1e-16, 99) == 0.0 and np.isnan(z_score(0.4, 0.0, 0.1, 1))
    assert z_score(0.4, 0.0, 0.1, 3) == pytest.approx(4.0)
    mean_, std, z, *_ = z_against(0.4, [0.0, 0.1, -0.1])
    assert (mean_, z) == pytest.approx((0.0, 4.0)) and std == pytest.approx(0.1)
    with pytest.raises(InputError, match="side=2 must be 1"):
        z_against(0.1, controls, side=2)


def test_holm_matches_a_hand_computed_family():
    from nnsight_vla.steering.controls import holm

    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept at 0.06)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    got = holm([0.01, float("nan"), 0.02])  # NaN stays NaN and is not counted: m = 2
    assert np.isnan(got[1]) and got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.02)
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        holm([0.2, 1.5])


def test_sides_make_the_p_value_one_sided_and_are_checked():
    values = {"baseline": [0.0, 0.0], "up": [0.4, 0.4], **{f"up/random{k}": [0.1 * k, 0.1 * k] for k in range(9)}}
    rows = [{"task": 0, "episode": e, "condition": c, "success": False, "z_displacement": z, "error": None,
             **{m: 0.0 for m in ("length", "path_length", "displacement_per_step", "mean_speed", "max_speed",
                                 "min_height")}} for c, zs in values.items() for e, z in enumerate(zs)]
    groups = {"up": [f"up/random{k}" for k in range(9)]}
    # control shifts 0.0 .. 0.8; the steering's 0.4: raised by 0.4..0.8 (5 controls), lowered by 0..0.4 (5)
    up = versus_random(rows, groups, {"up": {"z_displacement": 1}})["up"]["z_displacement"]
    assert up["p"] == pytest.approx(6 / 10) and up["side"] == 1 and up["p_min"] == pytest.approx(0.1)
    down = versus_random(rows, groups, {"up": {"z_displacement": -1}})["up"]["z_displacement"]
    assert down["p"] == pytest.approx(6 / 10) and down["side"] == -1
    either = versus_random(rows, groups)["up"]["path_length"]
    assert either["side"] == 0 and either["p"] == 1.0  # nothing moved: every control is as far
    from nnsight_vla.steering.controls import check_sides

    for bad, message in [({"down": {"dz": 1}}, "not a steering here"), ({"up": {"dx2": 1}}, "names the measure"),
                         ({"up": {"dz": 2}}, "must be 1"), ({"up": {"dz": True}}, "must be 1"), (["up"], "must be a dict")]:
        with pytest.raises(InputError, match=message):
            check_sides(bad, ["up"], ["dx", "dz"])
