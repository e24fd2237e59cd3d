"""lerobot policies for nnsight-vla: the family declarations (lerobot loads only when a model is used)."""

from nnsight_vla.family import Family

#: Pi0 and Pi0.5 (lerobot's ``pi0`` and ``pi05`` types), one family.
PI0_FAMILY = Family(
    name="pi0",
    model_class="nnsight_vla_lerobot.pi0:Pi0",
    config_types=("pi0", "pi05"),
    builtins=("tiny-pi0", "tiny-pi05"),
    recipes={"libero": "nnsight_vla_lerobot.libero:env_actions"},
)

#: Pi0-FAST (lerobot's ``pi0_fast``): the paper's second model.
PI0_FAST_FAMILY = Family(
    name="pi0_fast",
    model_class="nnsight_vla_lerobot.pi0_fast:Pi0Fast",
    config_types=("pi0_fast",),
    builtins=("tiny-pi0_fast",),
    recipes={"libero": "nnsight_vla_lerobot.libero:env_actions"},
)

#: SmolVLA (lerobot's ``smolvla``): SmolVLM with an interleaved cross-attention action expert.
SMOLVLA_FAMILY = Family(
    name="smolvla",
    model_class="nnsight_vla_lerobot.smolvla:SmolVLA",
    config_types=("smolvla",),
    builtins=("tiny-smolvla",),
    recipes={"libero": "nnsight_vla_lerobot.libero:env_actions"},
)

#: X-VLA (lerobot's ``xvla``): Florence-2 encoder and a flow-matching action head.
XVLA_FAMILY = Family(
    name="xvla",
    model_class="nnsight_vla_lerobot.xvla:XVLA",
    config_types=("xvla",),
    builtins=("tiny-xvla",),
    recipes={"libero": "nnsight_vla_lerobot.libero:env_actions"},
)
