"""TransformerLens on VLA towers: bridges built through registered adapters, the towers' real inputs, TransformerLens hooks on predictions.

Example:
    >>> from nnsight_vla.transformer_lens import to_bridge, bridge_inputs, hooks
    >>> bridge = to_bridge(model)                         # the language model, weights shared
    >>> logits, cache = bridge.run_with_cache(**bridge_inputs(model, obs))
    >>> with hooks(model, [("blocks.1.mlp.hook_post", clamp_fn)]):
    ...     action = model.predict_action(obs)
"""

from .adapters import relocate
from ..layout import BridgePart, TokenPrompt
from .bridge import bridge_inputs, to_bridge, token_inputs
from .hooks import HookSteering, hooks

__all__ = ["BridgePart", "HookSteering", "TokenPrompt", "bridge_inputs", "hooks", "relocate", "to_bridge", "token_inputs"]

# SAE-Lens at VLA hook points (sae_lens itself is imported on first use)
from .sae import load_sae, sae_features, sae_site  # noqa: E402
from .sae_steering import (  # noqa: E402
    ClampFeatures,
    FeatureIntervention,
    ScaleFeatures,
    attach_sae,
    feature_hooks,
    to_sae_bridge,
)
from .sae_training import activation_rows, fit_sae, train_sae  # noqa: E402

__all__ += [
    "ClampFeatures", "FeatureIntervention", "ScaleFeatures", "activation_rows", "attach_sae",
    "feature_hooks", "fit_sae", "load_sae", "sae_features", "sae_site", "to_sae_bridge", "train_sae",
]
