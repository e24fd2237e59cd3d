"""The shipped family contract over every built-in of every registered family, and on broken families."""

from dataclasses import replace

import pytest

import nnsight_vla
from nnsight_vla.testing.contract import ContractError, run_contract
from nnsight_vla_openvla.model import OpenVLA

SLOW = {"smol-openvla", "mini-openvla"}
#: mini-openvla-act is smol-openvla's code path with other weights (mini-openvla, which says words first, is checked)
BUILTINS = [name for family in nnsight_vla.families().values() for name in family.builtins if name != "mini-openvla-act"]


def test_every_family_has_a_builtin_here():
    assert {"tiny-openvla", "smol-openvla", "tiny-pi0", "tiny-pi05"} <= set(BUILTINS)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in BUILTINS]
)
def test_builtin_keeps_the_contract(name, tmp_path):
    ran = run_contract(nnsight_vla.load(name), tmp_path)
    assert ran == ["standard names", "plain vs traced", "batching", "collect", "steering", "model key", "save/load"]


def test_a_layout_naming_a_missing_module_is_caught():
    vlm = OpenVLA.layout.towers[0]

    class Broken(OpenVLA):
        layout = replace(OpenVLA.layout, towers=(replace(vlm, norm="language_model.model.final_norm"),))

    with pytest.raises(ContractError, match=r"load: StandardNameError: .*'language_model.model.final_norm'.*no submodule 'final_norm'"):
        run_contract((Broken, "tiny-openvla"))


def test_a_wrong_run_start_is_caught_by_collect_and_by_steering():
    """Call counting restarts at every forward of layer 0 instead of once per prediction:
    the collector then sees one call instead of seven, and steering the prefill only
    steers every decoding step."""

    class Recounting(OpenVLA):
        layout = replace(OpenVLA.layout, run_start="language_model.model.layers.0")

    with pytest.raises(ContractError, match=r"collect: vlm.0.resid: the collector's \(1, 1, 64\) differ from the trace's \(1, 7, 64\)"):
        run_contract((Recounting, "tiny-openvla"), skip=("save/load", "model key"))
    with pytest.raises(ContractError, match=r"steering: model.steer clamp \(tower 'vlm', calls='prefill'\)"):
        run_contract((Recounting, "tiny-openvla"), skip=("save/load", "model key", "collect"))
