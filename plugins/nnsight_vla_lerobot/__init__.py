"""lerobot policies for nnsight-vla: the family declarations (lerobot loads only when a model is used)."""

from nnsight_vla.registry import Family

#: Pi0 and Pi0.5 (lerobot's ``pi0`` and ``pi05`` types), one family.
PI0_FAMILY = Family(
    name="pi0",
    model_class="nnsight_vla_lerobot.pi0:Pi0",
    config_types=("pi0", "pi05"),
    builtins=("tiny-pi0", "tiny-pi05"),
    recipes={"libero": "nnsight_vla_lerobot.libero:env_actions"},
)
