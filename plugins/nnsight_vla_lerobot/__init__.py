"""Pi0 and Pi0.5 (lerobot) for nnsight-vla: the family declaration (lerobot loads only when used)."""

from nnsight_vla.registry import Family

FAMILY = Family(
    name="pi0",
    model_class="nnsight_vla_pi0.model:Pi0",
    config_types=("pi0", "pi05"),
    builtins=("tiny-pi0", "tiny-pi05"),
    recipes={"libero": "nnsight_vla_pi0.libero:env_actions"},
)
