"""Model families, discovered through the ``nnsight_vla.models`` entry-point group."""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import CheckpointError, InputError, UnknownModelError
from .remote import is_hub_id

ENTRY_POINT_GROUP = "nnsight_vla.models"


@dataclass(frozen=True)
class Family:
    """What a plugin declares about one model family (its entry point's target).

    Attributes:
        name: Family name, e.g. ``"openvla"``.
        model_class: ``"module:Class"`` of its `VLA` subclass, imported only when used.
        config_types: Values of ``config.json``'s ``model_type`` (or lerobot's ``type``)
            that this family loads.
        builtins: Offline names it builds without any files, e.g. ``("tiny-openvla",)``.
        recipes: Environment recipes, ``{"libero": "module:function"}``: a function
            ``(model, raw_observation, task, seed) -> [k, action_dim]`` actions to execute.
        inert_checks: Family-contract checks a built-in cannot pass, with why, by built-in:
            ``{"tiny-x": {"actions depend on the observation": "<reason>"}}``. `run_contract`
            lists them as not applicable instead of running them.

    Example:
        >>> Family("toy", "toy_plugin.model:Toy", ("toy",)).name
        'toy'
    """

    name: str
    model_class: str
    config_types: tuple[str, ...]
    builtins: tuple[str, ...] = ()
    recipes: Mapping[str, str] = field(default_factory=dict)
    inert_checks: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def load_class(self) -> type:
        """Import and return the family's model class."""
        return _import(self.model_class)

    def recipe(self, env: str) -> Callable:
        """The family's function for environment ``env`` (e.g. ``"libero"``)."""
        if env not in self.recipes:
            raise UnknownModelError(
                f"family {self.name!r} has no {env!r} recipe (it has {sorted(self.recipes)}); "
                f"add one to its Family(recipes={{{env!r}: 'module:function'}})."
            )
        return _import(self.recipes[env])


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def family_of(model: Any) -> Family:
    """The registered family whose model class ``model`` is an instance of."""
    for family in families().values():
        if isinstance(model, family.load_class()):
            return family
    raise UnknownModelError(f"{type(model).__name__} belongs to no registered family.\n{_describe()}")


_extra: dict[str, Family] = {}


@functools.cache
def _discovered() -> dict[str, Family]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        family = ep.load()
        if not isinstance(family, Family):
            raise UnknownModelError(
                f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r} points at "
                f"{type(family).__name__}, not an nnsight_vla Family; fix the plugin's pyproject."
            )
        found[family.name] = family
    return found


def families() -> dict[str, Family]:
    """Every registered family by name (installed plugins plus `register` calls)."""
    return {**_discovered(), **_extra}


def register(family: Family) -> None:
    """Register a family in this process (installed plugins need no call)."""
    _extra[family.name] = family


def _describe() -> str:
    lines = [
        f"  {f.name}: config types {list(f.config_types)}, built-in {list(f.builtins)}"
        for f in families().values()
    ]
    return "registered families:\n" + ("\n".join(lines) or "  (none: is nnsight-vla installed?)")


def _config_type(config_file: Path) -> str | None:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {config_file}: {err}") from err
    return config.get("model_type") or config.get("type")


def _hub_config(repo_id: str, revision: str | None = None) -> Path:
    try:
        import huggingface_hub

        return Path(huggingface_hub.hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception as err:  # offline, unknown repo, gated repo...
        raise UnknownModelError(
            f"{repo_id!r} is neither a built-in name nor a local folder, and the Hugging Face Hub "
            f"could not provide it ({type(err).__name__}: {err}). Download the checkpoint "
            f"where the Hub is reachable and pass its folder.\n{_describe()}"
        ) from err


def resolve(source: str | Path, revision: str | None = None) -> Family:
    """The family that loads ``source`` (a built-in name, a checkpoint folder or a Hub id).

    Example:
        >>> resolve("tiny-openvla").name
        'openvla'
    """
    source = str(source)
    for family in families().values():
        if source in family.builtins:
            return family
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} has no config.json; a checkpoint folder needs the config written "
                "with the weights (save it with `model.save_pretrained(path)`)."
            )
        config_file = path / "config.json"
    elif is_hub_id(source):
        config_file = _hub_config(source, revision)
    else:
        raise UnknownModelError(f"{source!r} is not a built-in name or a folder.\n{_describe()}")
    kind = _config_type(config_file)
    for family in families().values():
        if kind in family.config_types:
            return family
    raise UnknownModelError(
        f"{source!r} has model type {kind!r}, which no installed plugin loads.\n{_describe()}"
    )


def load(source: str | Path, *, dtype=None, device=None, dispatch: bool = True, revision: str | None = None, **kwargs):
    """Load a VLA as a traceable nnsight model.

    Args:
        source: A built-in name (``"tiny-openvla"``), a checkpoint folder, or a Hub id.
        dtype: ``"float32"``, ``"bfloat16"`` or a torch dtype; default: the checkpoint's.
        device: Where to put the weights, e.g. ``"cpu"`` or ``"cuda"``; one this machine does
            not have raises `InputError` before anything is read.
        dispatch: Load weights now (default). ``False`` builds on the meta device only,
            as nnsight does, for ``scan`` or remote execution: a Hub checkpoint's weight
            files are then not downloaded until the model is dispatched.
        revision: A Hub branch, tag or commit (the model key pins the commit).
        **kwargs: Family options, e.g. ``unnorm_key=`` for OpenVLA; one the family does not
            take raises `InputError` listing those it does.

    Example:
        >>> model = load("tiny-openvla")
        >>> model.spec.n_layers
        2
    """
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise InputError(f"source={source!r}: give a built-in name such as 'tiny-openvla', a checkpoint folder "
                         "or a Hub id.")
    family = resolve(source, revision)
    cls = family.load_class()
    return cls(str(source), dtype=dtype, device=device, dispatch=dispatch, revision=revision, **kwargs)
