"""`Layout`: a family's module paths as data; standard names, layer lists, inert sites and TransformerLens names derive from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from .errors import StandardNameError

#: Standard module names every family provides.
STANDARD_NAMES = ("vision", "projector", "layers", "ln_final", "lm_head")

#: Inside a Llama/Gemma decoder layer: TransformerLens component name -> module path.
DECODER_BLOCK = MappingProxyType({
    "ln1": "input_layernorm",
    "attn": "self_attn",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "ln2": "post_attention_layernorm",
    "mlp": "mlp",
    "mlp.gate": "mlp.gate_proj",
    "mlp.in": "mlp.up_proj",
    "mlp.out": "mlp.down_proj",
})


@dataclass(frozen=True)
class TowerLayout:
    """Where one decoder stack lives (every path from the model's root).

    Attributes:
        name: ``"vlm"`` for the language model, whose parts get the top-level standard names
            ``layers``, ``ln_final`` and ``lm_head``; any other name (``"expert"``) aliases ``root``.
        layers: The decoder-layer list.
        norm: The final norm.
        unembed: The Linear mapping the residual stream to token logits, or None.
        embed: The token embedding, or None.
        root: The module holding ``layers`` and ``norm`` (aliased as ``name`` for other towers).
        runs: 1 when the tower runs once per prediction (Pi0's VLM); None when it runs on
            every forward of the prediction (OpenVLA's decoding steps, Pi0's denoising steps).
        block: Inside one decoder layer, TransformerLens component name -> module path.
        layers_run: False when the family calls a layer's parts but never the layer module
            (SmolVLA): a layer's output then never exists, and the residual stream after
            layer i is read and written (in place) at the input of layer i+1's ``ln1`` (the
            final norm's after the last layer); see `nnsight_vla.Site`.
    """

    name: str
    layers: str
    norm: str
    unembed: str | None = None
    embed: str | None = None
    root: str | None = None
    runs: int | None = None
    block: Mapping[str, str] = DECODER_BLOCK
    layers_run: bool = True

    def rename(self) -> dict[str, str]:
        """Family path -> standard name for this tower."""
        if self.name == "vlm":
            out = {self.layers: "layers", self.norm: "ln_final"}
            return out | ({self.unembed: "lm_head"} if self.unembed else {})
        if self.root is None:
            raise StandardNameError(f"tower {self.name!r} needs root= (the module to alias as {self.name!r}).")
        return {self.root: self.name}

    def transformer_lens(self) -> dict[str, str]:
        """TransformerLens component name -> family path (``blocks.*`` relative to a layer)."""
        out = {"embed": self.embed, "blocks": self.layers, "ln_final": self.norm, "unembed": self.unembed}
        out |= {f"blocks.{k}": v for k, v in self.block.items()}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class BridgePart:
    """One part of a model that a TransformerLens bridge wraps (`transformer_lens.to_bridge`).

    Attributes:
        path: The module the bridge wraps (a weight-sharing copy of it), from the model's root.
        architecture: The name its adapter is registered under (a ``transformer_lens.architectures``
            entry point).
        tower: The layout tower the bridge runs.
        config: The attribute path from the module to its transformers config.
        unfoldable: Why TransformerLens's weight processing (compatibility mode, folded norms)
            cannot apply to it, if it cannot (e.g. adaptive norms whose scale depends on an input).

    Example:
        >>> BridgePart("model.vlm", "ToyVLM", "vlm", config="config.text_config")
    """

    path: str
    architecture: str
    tower: str = "vlm"
    config: str = "config"
    unfoldable: str | None = None

    def hf_config(self, module: torch.nn.Module) -> Any:
        """The transformers config of this part of ``module`` (a model's root module)."""
        config = module.get_submodule(self.path)
        for attr in self.config.split("."):
            config = getattr(config, attr)
        return config


@dataclass(frozen=True)
class TokenPrompt:
    """One observation as token ids for a bridge (what a family's ``bridge_tokens`` returns).

    The ids with placeholders where the image patches go, that slice, the patch embeddings,
    and, for towers whose mask is not causal (Pi0's prefix-LM), ``forward_kwargs(ids)``: the
    attention mask and positions the policy would build for any ids of this length.
    """

    tokens: torch.Tensor
    patches: slice
    embeddings: torch.Tensor
    forward_kwargs: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class Layout:
    """A family's contract with the core, as data.

    Attributes:
        towers: Its decoder stacks; the first is ``"vlm"``.
        modules: Other standard names: family path -> name (``vision``, ``projector``, ...).
        run_start: A module that runs once, first, in every prediction (call counting starts there).
        inert: Modules that cannot change the actions (touching them warns); a path part
            ``-1`` means the last entry of a layer list, e.g. ``"model.layers.-1.mlp"``, and
            ``*`` every entry (in `inert`, `inert_output` and `idle`).
        inert_output: Modules whose output alone cannot change the actions.
        idle: Modules that never run in a prediction (reading them in a trace is an error).
        bridges: The parts a TransformerLens bridge can wrap, by name (``"vlm"``, ``"expert"``).

    Example:
        >>> Layout((TowerLayout("vlm", "lm.model.layers", "lm.model.norm", "lm.lm_head"),),
        ...        {"vision_backbone": "vision", "projector": "projector"}, "vision_backbone")
    """

    towers: tuple[TowerLayout, ...]
    modules: Mapping[str, str] = field(default_factory=dict)
    run_start: str = ""
    inert: tuple[str, ...] = ()
    inert_output: tuple[str, ...] = ()
    idle: tuple[str, ...] = ()
    bridges: Mapping[str, BridgePart] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [t.name for t in self.towers]
        if not names or names[0] != "vlm" or len(set(names)) != len(names):
            raise StandardNameError(f"a layout's towers must be distinct and start with 'vlm', got {names}.")
        strays = sorted(name for name, part in self.bridges.items() if part.tower not in names)
        if strays:
            raise StandardNameError(f"the layout's bridges {strays} run towers it does not have ({names}).")

    def rename(self) -> dict[str, str]:
        """The nnsight rename map: family path -> standard name (identity entries dropped)."""
        out = dict(self.modules)
        for tower in self.towers:
            out |= tower.rename()
        return {k: v for k, v in out.items() if k != v}

    def standard_names(self) -> set[str]:
        """The standard names this layout binds: those of ``modules`` and of every tower."""
        return {*self.modules.values(), *(v for t in self.towers for v in t.rename().values())}

    def tower(self, name: str) -> TowerLayout:
        """The tower called ``name``; raises `StandardNameError` if there is none."""
        for tower in self.towers:
            if tower.name == name:
                return tower
        raise StandardNameError(f"the layout has no tower {name!r}; it has {[t.name for t in self.towers]}.")

    def resolved(self, module: torch.nn.Module, where: str = "the layout") -> Layout:
        """This layout with every path checked against ``module`` and ``-1`` parts made absolute.

        A path naming no module raises `StandardNameError` naming it.
        """
        missing = sorted(set(STANDARD_NAMES) - self.standard_names())
        if missing:
            raise StandardNameError(f"{where} binds no module to the standard name(s) {missing}; add their paths.")

        def check(path: str | None) -> str | None:
            return None if path is None else find(module, path, where)[1]

        towers = []
        for tower in self.towers:
            for part, rel in tower.block.items():
                check(f"{tower.layers}.0.{rel}")
            towers.append(TowerLayout(
                tower.name, check(tower.layers), check(tower.norm), check(tower.unembed),
                check(tower.embed), check(tower.root), tower.runs, tower.block, tower.layers_run,
            ))
        for path in [*self.modules, *(part.path for part in self.bridges.values())]:
            check(path)
        def every(paths: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(check(p) for path in paths for p in expand(module, path, where))

        return Layout(
            tuple(towers), dict(self.modules), check(self.run_start) if self.run_start else "",
            every(self.inert), every(self.inert_output), every(self.idle), dict(self.bridges),
        )


def expand(module: torch.nn.Module, path: str, where: str = "the layout") -> list[str]:
    """``path`` with each ``*`` part replaced by every index of the list it names."""
    head, star, tail = path.partition("*")
    if not star:
        return [path]
    listed = find(module, head.rstrip("."), where)[0]
    if not isinstance(listed, (torch.nn.ModuleList, torch.nn.Sequential)):
        raise StandardNameError(f"{where} names {path!r}, but {head.rstrip('.')!r} is no module list.")
    return [p for i in range(len(listed)) for p in expand(module, f"{head}{i}{tail}", where)]


def find(module: torch.nn.Module, path: str, where: str = "the layout") -> tuple[torch.nn.Module, str]:
    """The submodule at ``path`` (negative list indices count from the end) and its absolute path."""
    current, parts = module, []
    for part in path.split(".") if path else []:
        children = current._modules
        if part.lstrip("-").isdigit() and isinstance(current, (torch.nn.ModuleList, torch.nn.Sequential)):
            index = int(part)
            if not -len(current) <= index < len(current):
                raise StandardNameError(
                    f"{where} names {path!r}, but {'.'.join(parts) or 'the root'} has {len(current)} entries."
                )
            part = str(index % len(current))
        if children.get(part) is None:
            have = ", ".join(list(children)[:12]) or "no submodules"
            raise StandardNameError(
                f"{where} names {path!r}, but {'.'.join(parts) or 'the root'} has no submodule "
                f"{part!r} (it has {have}); fix the path."
            )
        current = children[part]
        parts.append(part)
    return current, ".".join(parts)
