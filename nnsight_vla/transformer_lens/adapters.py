"""Adapters from layouts: a TransformerLens adapter's module paths rewritten from a family's `TowerLayout`."""

from __future__ import annotations

from typing import Any

from ..errors import StandardNameError
from ..layout import TowerLayout


def relocate(adapter: Any, tower: TowerLayout, root: str) -> Any:
    """Point ``adapter``'s components at the tower's paths, relative to ``root``.

    ``root`` is the module the bridge wraps; block parts stay relative to one layer. Returns
    the adapter.

    Example (an adapter file):
        >>> class OpenVLAAdapter(LlamaArchitectureAdapter):
        ...     def __init__(self, cfg):
        ...         super().__init__(cfg)
        ...         relocate(self, OpenVLA.layout.tower("vlm"), root="language_model")
    """
    prefix = f"{root}." if root else ""
    mapping = adapter.component_mapping
    for key, path in tower.transformer_lens().items():
        parts = key.split(".")
        component = mapping.get(parts[0])
        for part in parts[1:]:
            component = None if component is None else component.submodules.get(part)
        if component is None:
            continue  # a part the adapter does not bridge (e.g. the gate of a non-gated MLP)
        if len(parts) == 1:
            if not path.startswith(prefix):
                raise StandardNameError(f"{key} lives at {path!r}, outside the bridged module {root!r}.")
            path = path[len(prefix):]
        elif parts[0] == "blocks" and len(parts) == 3:
            path = path.split(".", 1)[1]  # attn.q: "self_attn.q_proj" -> relative to the attention module
        component.name = path
    return adapter
