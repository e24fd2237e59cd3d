"""OpenVLA for nnsight-vla: the family declaration (heavy modules load only when used)."""

from nnsight_vla.family import Family

TINY, SMOL = "tiny-openvla", "smol-openvla"
MINI = ("mini-openvla", "mini-openvla-act")  # smol-openvla taught to follow motion instructions

OBSERVATION, CLAMP = "actions depend on the observation", "a strong clamp changes actions"
#: Contract checks built-ins cannot pass (`nnsight_vla.testing.contract`), and why.
INERT = {
    SMOL: {OBSERVATION: "SmolLM2 never learnt to emit action tokens and its vision tower is random: the "
                        "action-token argmax is the same for any image or instruction tried",
           CLAMP: "SmolLM2 never learnt to emit action tokens: their argmax survives a clamp of layer 0"},
}

FAMILY = Family(
    name="openvla",
    model_class="nnsight_vla_openvla.model:OpenVLA",
    config_types=("openvla",),
    builtins=(TINY, SMOL, *MINI),
    recipes={"libero": "nnsight_vla_openvla.libero:env_actions"},
    inert_checks=INERT,
)
