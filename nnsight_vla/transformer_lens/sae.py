"""SAE-Lens sparse autoencoders at VLA sites: loading, checking and reading features.

An SAE is loaded and checked against a site, and its features are read on predictions
(`collect`); steering them lives in `sae_steering`, training in `sae_training`.

An SAE names where it reads in ``sae.cfg.metadata.hook_name``, a TransformerLens hook point such
as ``"blocks.1.hook_resid_post"`` or ``"blocks.1.mlp.hook_post"``: that is a `Site`
(`Site.parse`), and the SAE's ``d_in`` must be the site's width. SAE-Lens is imported only when
one of these functions needs it (importing it takes seconds).

Example:
    >>> from nnsight_vla.transformer_lens import load_sae, sae_features, ClampFeatures
    >>> sae = load_sae("saes/resid-1", model)             # saved by sae.save_model(folder)
    >>> feats = sae_features(model, sae, [obs1, obs2], calls="prefill", positions="last")
    >>> with model.steer(ClampFeatures(sae, [12], 5.0)):
    ...     action = model.predict_action(obs1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..collect import collect
from ..errors import CheckpointError, InputError, SetupError
from ..sites import KINDS, Site

#: The SAE metadata key naming the tower an SAE was trained on (absent: ``"vlm"``).
TOWER_KEY = "vla_tower"
#: The files of SAE-Lens's own format (``sae.save_model(folder)``).
SAE_FILES = ("cfg.json", "sae_weights.safetensors")
#: Normalisations whose decode needs the statistics of the encode just before it.
_STATEFUL_NORMS = ("layer_norm", "constant_norm_rescale")


def _sae_lens() -> Any:
    try:
        import sae_lens
    except ImportError as err:  # pragma: no cover - the tl extra installs it
        raise SetupError(
            "SAE-Lens is not installed; install the 'tl' extra: pip install 'nnsight-vla[tl]' (or make env)."
        ) from err
    return sae_lens


def _check_is_sae(sae: Any) -> None:
    if not isinstance(sae, _sae_lens().SAE):
        raise InputError(
            f"{type(sae).__name__} is not an SAE-Lens SAE; load one with nnsight_vla.transformer_lens.load_sae "
            "or sae_lens.SAE.load_from_disk."
        )


def sae_tower(sae: Any, tower: str | None = None) -> str:
    """The tower an SAE reads: ``tower`` if given, else the one its metadata names, else ``"vlm"``."""
    if tower is not None:
        return str(tower)
    return str(sae.cfg.metadata.get(TOWER_KEY) or "vlm")


def sae_site(model: Any, sae: Any, tower: str | None = None) -> Site:
    """The site of ``model`` that ``sae`` reads, checked.

    The SAE's ``metadata.hook_name`` must be a hook point a prediction runs and its ``d_in``
    the site's width.

    Example:
        >>> sae_site(model, sae)            # metadata.hook_name == "blocks.1.mlp.hook_post"
        Site(layer=1, kind='neurons', tower='vlm')
    """
    _check_is_sae(sae)
    meta = sae.cfg.metadata
    hook = meta.hook_name
    if not hook:
        raise InputError(
            "the SAE's cfg.metadata.hook_name is empty; set it to the TransformerLens hook it reads, "
            "e.g. sae.cfg.metadata.hook_name = 'blocks.1.hook_resid_post'."
        )
    if meta.hook_name_out and meta.hook_name_out != hook:
        raise InputError(
            f"the SAE reads {hook!r} and writes {meta.hook_name_out!r} (a transcoder); only SAEs that "
            "reconstruct the activation they read are supported."
        )
    site = Site.parse(hook, sae_tower(sae, tower)).on(model)
    width = site.width(model)
    if sae.cfg.d_in != width:
        raise InputError(
            f"the SAE at {hook!r} has d_in={sae.cfg.d_in}, but that hook (site {site}) of "
            f"{model.spec.family} has width {width} ({KINDS[site.kind].width}); use an SAE trained on "
            "this model's activations."
        )
    return site


def load_sae(path: str | Path, model: Any = None, *, tower: str | None = None,
             device: str | None = None, dtype: str | None = None) -> Any:
    """An SAE saved in SAE-Lens's own format, checked against ``model``'s site if one is given.

    The format is what ``sae.save_model(folder)`` writes: ``cfg.json`` and
    ``sae_weights.safetensors``. The check is `sae_site`'s. ``device`` defaults to the model's
    device, else the CPU.

    Example:
        >>> sae = load_sae("saes/neurons-1", model)
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"SAE folder {folder} does not exist; save one with sae.save_model(folder).")
    missing = [name for name in SAE_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"SAE folder {folder} lacks {', '.join(missing)}; SAE-Lens's format is what "
            "sae.save_model(folder) writes (cfg.json and sae_weights.safetensors)."
        )
    if device is None:
        device = str(getattr(model, "target_device", None) or "cpu")
    try:
        sae = _sae_lens().SAE.load_from_disk(folder, device=device, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"SAE folder {folder} could not be read by SAE-Lens: {err}") from err
    if model is not None:
        sae_site(model, sae, tower)
    return sae


def sae_features(model: Any, sae: Any, observations: Any, *, calls: Any = "prefill", positions: Any = "all",
                 tower: str | None = None, batch_size: int = 1, progress: bool = False,
                 **options: Any) -> torch.Tensor:
    """The SAE's feature activations on ``model``'s predictions.

    They are the site's activations from `nnsight_vla.collect` (same ``calls``,
    ``positions``, ``batch_size``, options), encoded.

    Returns:
        A float32 CPU tensor ``[observations, calls, positions, d_sae]``.

    Example:
        >>> feats = sae_features(model, sae, [obs1, obs2], calls="actions", positions="last")
        >>> feats.shape                     # OpenVLA: one call per action dimension
        torch.Size([2, 7, 1, 512])
    """
    site = sae_site(model, sae, tower)
    acts = collect(model, observations, [site], calls=calls, positions=positions,
                   batch_size=batch_size, progress=progress, **options)[site]
    with torch.no_grad():
        return sae.encode(acts.to(sae.device)).float().cpu()


__all__ = ["SAE_FILES", "TOWER_KEY", "load_sae", "sae_features", "sae_site", "sae_tower"]
