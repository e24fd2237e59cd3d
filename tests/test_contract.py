"""The shipped family contract over every built-in of every registered family, and on broken families."""

from dataclasses import replace

import pytest
import torch

import nnsight_vla
from nnsight_vla import registry
from nnsight_vla.testing.contract import CHECKS, ContractError, run_contract
from nnsight_vla_lerobot.pi0 import Pi0
from nnsight_vla_openvla.model import OpenVLA

SLOW = {"smol-openvla", "mini-openvla"}
#: mini-openvla-act is smol-openvla's code path with other weights (mini-openvla, which says words first, is checked)
BUILTINS = [name for family in nnsight_vla.families().values() for name in family.builtins if name != "mini-openvla-act"]


def test_every_family_has_a_builtin_here():
    assert {"tiny-openvla", "smol-openvla", "tiny-pi0", "tiny-pi05"} <= set(BUILTINS)


ALL = ["standard names", "plain vs traced", "batching", "actions depend on the observation", "collect", "steering",
       "a strong clamp changes actions", "model key", "save/load"]
#: A slow built-in's contract runs as two tests (steering, and the rest), each well under a minute.
PARTS = [pytest.param(n, part, marks=pytest.mark.slow) for n in BUILTINS if n in SLOW for part in ("steering", "rest")]


@pytest.mark.parametrize("name, part", [(n, "all") for n in BUILTINS if n not in SLOW] + PARTS)
def test_builtin_keeps_the_contract(name, part, tmp_path):
    """Every check runs, bar those the family declares inert for this built-in, which are reported."""
    checks = {"all": ALL, "steering": ["steering"], "rest": [c for c in ALL if c != "steering"]}[part]
    ran = run_contract(nnsight_vla.load(name), tmp_path, skip=tuple(c for c in ALL if c not in checks))
    inert = nnsight_vla.registry.resolve(name).inert_checks.get(name, {})
    assert ran == [f"{check} (not applicable: {inert[check]})" if check in inert else check for check in checks]


def test_only_openvla_builtins_are_excused_and_each_says_why():
    """Every built-in but smol-openvla (SmolLM2, never taught actions) passes every check; it
    is excused from the two acting checks with a reason."""
    excused = {name: sorted(checks) for family in nnsight_vla.families().values()
               for name, checks in family.inert_checks.items()}
    assert excused == {
        "smol-openvla": ["a strong clamp changes actions", "actions depend on the observation"],
    }


class Constant(Pi0):
    """tiny-pi0 whose normalised chunk is always zeros: the mean action, whatever it sees."""

    def _chunk(self, batch, seed, num_steps):
        return torch.zeros_like(super()._chunk(batch, seed, num_steps))


def _only(*checks):
    return tuple(name for name in CHECKS if name not in checks)


def test_actions_that_ignore_the_observation_are_caught():
    with pytest.raises(ContractError, match=r"actions depend on the observation: a noise image and a black one, "
                                            r"with other instructions and states, both get actions \[-0.2 .*ignore its inputs"):
        run_contract((Constant, "tiny-pi0"), skip=_only("actions depend on the observation"))


def test_a_clamp_that_cannot_reach_the_actions_is_caught():
    with pytest.raises(ContractError, match=r"a strong clamp changes actions: clamping neurons 0-7 of layer 0 of "
                                            r"tower 'expert' at 50 leaves the actions \[-0.2 .* unchanged"):
        run_contract((Constant, "tiny-pi0"), skip=_only("a strong clamp changes actions"))


def test_a_declared_inert_check_is_reported_not_run(monkeypatch):
    family = registry.resolve("tiny-pi0")
    reason = "its actions are the mean action by construction"
    monkeypatch.setitem(registry._extra, family.name, replace(
        family, inert_checks={"tiny-pi0": {"actions depend on the observation": reason}}))
    ran = run_contract((Constant, "tiny-pi0"), skip=_only("actions depend on the observation"))
    assert ran == ["load", f"actions depend on the observation (not applicable: {reason})"]
    monkeypatch.setitem(registry._extra, family.name, replace(family, inert_checks={"tiny-pi0": {"acts": reason}}))
    with pytest.raises(ContractError, match=r"inert checks: family 'pi0' declares 'tiny-pi0': \['acts'\]"):
        run_contract((Constant, "tiny-pi0"), skip=_only("actions depend on the observation"))


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
