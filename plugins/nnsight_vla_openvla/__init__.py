"""OpenVLA for nnsight-vla: the family declaration (heavy modules load only when used)."""

from nnsight_vla.registry import Family

TINY, SMOL = "tiny-openvla", "smol-openvla"
MINI = ("mini-openvla", "mini-openvla-act")  # smol-openvla taught to follow motion instructions

FAMILY = Family(
    name="openvla",
    model_class="nnsight_vla_openvla.model:OpenVLA",
    config_types=("openvla",),
    builtins=(TINY, SMOL, *MINI),
    recipes={"libero": "nnsight_vla_openvla.libero:env_actions"},
)
