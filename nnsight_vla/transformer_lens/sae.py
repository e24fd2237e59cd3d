"""SAE-Lens sparse autoencoders at VLA sites: loading and checking against a site, reading features
on predictions (`collect`), steering features (nnsight traces, `model.steer`, TransformerLens
bridges), training on collected activations.

An SAE names where it reads in ``sae.cfg.metadata.hook_name``, a TransformerLens hook point such
as ``"blocks.1.hook_resid_post"`` or ``"blocks.1.mlp.hook_post"``: that is a `Site`
(`site_of`), and the SAE's ``d_in`` must be the site's width. SAE-Lens is imported only when
one of these functions needs it (importing it takes seconds).

Example:
    >>> from nnsight_vla.transformer_lens import load_sae, sae_features, ClampFeatures
    >>> sae = load_sae("saes/resid-1", model)             # saved by sae.save_model(folder)
    >>> feats = sae_features(model, sae, [obs1, obs2], calls="prefill", positions="last")
    >>> with model.steer(ClampFeatures(sae, [12], 5.0)):
    ...     action = model.predict_action(obs1)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..collect import collect
from ..errors import CheckpointError, InputError, SetupError
from ..paths import writable_folder
from ..sites import KINDS, Site
from ..steering.edits import Edit, as_list
from ..steering.interventions import Intervention, number
from .bridge import to_bridge
from .hooks import site_of

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
    """The site of ``model`` that ``sae`` reads, checked: its ``metadata.hook_name`` must be a
    hook point a prediction runs and its ``d_in`` the site's width.

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
    site = site_of(hook, sae_tower(sae, tower)).on(model)
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
    """An SAE saved in SAE-Lens's own format (``sae.save_model(folder)``: ``cfg.json`` and
    ``sae_weights.safetensors``), checked against ``model``'s site when a model is given
    (see `sae_site`). ``device`` defaults to the model's device, else the CPU.

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
    """The SAE's feature activations on ``model``'s predictions: the site's activations from
    `nnsight_vla.collect` (same ``calls``, ``positions``, ``batch_size``, options), encoded.

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


# -- steering --------------------------------------------------------------------------------------


class FeatureIntervention(Intervention):
    """Steers chosen features of an SAE at its site: encodes the activation, changes the chosen
    features, decodes, and adds back the SAE's reconstruction error, i.e. the activation
    becomes ``x + (decode(f') - decode(f))`` = ``decode(f') + (x - decode(f))``. Written as the
    change, an untouched SAE (``f' == f``) leaves the activation bit-for-bit as it was.

    Args:
        sae: An SAE-Lens SAE whose ``metadata.hook_name`` is a site of the model.
        features: Feature indices (``0..d_sae-1``).
        tower: The tower the SAE reads (default: its metadata's, else ``"vlm"``).
        positions, calls, steps: As for every intervention (`Intervention`).
    """

    def __init__(self, sae: Any, features: int | Sequence[int], *, tower: str | None = None, **where: Any):
        _check_is_sae(sae)
        super().__init__(tower=sae_tower(sae, tower), **where)
        self._sae = sae
        self.features = _features(features, sae.cfg.d_sae)
        # what descriptions of the steering (evaluation runs) record: the hook, the SAE's
        # settings and its weights (shared, not copied; hashed there)
        self.hook_name = sae.cfg.metadata.hook_name
        self.sae_config = {k: v for k, v in sae.cfg.to_dict().items() if k not in ("metadata", "device")}
        self.sae_weights = sae.state_dict()

    @property
    def sae(self) -> Any:
        """The SAE-Lens SAE."""
        return self._sae

    def new_values(self, selected: torch.Tensor) -> torch.Tensor:
        """Replacement values for the chosen features' activations ``[..., features]``."""
        raise NotImplementedError

    def steer_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats`` ``[..., d_sae]`` with the chosen features replaced (a new tensor)."""
        idx = torch.tensor(self.features, device=feats.device)
        out = feats.clone()
        out[..., idx] = self.new_values(feats[..., idx]).to(out.dtype)
        return out

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(f') - decode(f)`` for activations ``x`` ``[..., d_in]``, in ``x``'s dtype and device."""
        sae = self.sae
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            sae_in = x.to(sae.device)
            feats = sae.encode(sae_in)
            clean = sae.decode(feats)
            if sae.cfg.normalize_activations in _STATEFUL_NORMS:
                sae.encode(sae_in)  # its decode reads the statistics the encode just before it set
            steered = sae.decode(self.steer_features(feats))
            return (steered - clean).to(device=x.device, dtype=x.dtype)

    def edits(self, model: Any) -> list[Edit]:
        self._tower(model)
        site = sae_site(model, self.sae, self.tower)

        def edit(x: torch.Tensor, call: int) -> torch.Tensor:
            if not self.active(call):
                return x
            positions = self.position_index(x.shape[-2], call)
            if positions is None:
                return x + self.delta(x)
            if not len(positions):
                return x
            pos = positions.to(x.device)
            x = x.clone()
            x[..., pos, :] = x[..., pos, :] + self.delta(x[..., pos, :])
            return x

        return [Edit(site, edit)]

    def bridge_hook(self, bridge: Any) -> tuple[str, Any]:
        """A ``(hook_name, fn)`` pair for ``bridge.run_with_hooks`` that steers the same features
        on the SAE attached to ``bridge`` (`attach_sae`): it changes the attached SAE's feature
        activations (``hook_sae_acts_post``), and the bridge adds back the error term (an SAE
        attached with ``use_error_term=False`` instead replaces the activation by the steered
        reconstruction). Like `steering.hook_points`, it counts its calls (one per forward):
        make a fresh one per run.

        Example:
            >>> bridge = to_sae_bridge(model, sae)
            >>> hooks = [steer.bridge_hook(bridge)]
            >>> logits = bridge.run_with_hooks(**bridge_inputs(model, obs), fwd_hooks=hooks)
        """
        if self.tower != "vlm":
            raise InputError(
                f"TransformerLens bridges cover the language model ('vlm'), not tower {self.tower!r}."
            )
        name = self.sae.cfg.metadata.hook_name
        attached = getattr(bridge, "acts_to_saes", {})
        if attached.get(name) is not self.sae:
            raise InputError(
                f"this SAE is not attached to the bridge at {name!r}; attach it first with "
                "attach_sae(bridge, sae) (or build the bridge with to_sae_bridge(model, sae))."
            )
        calls = [0]

        def fn(feats: torch.Tensor, hook: Any = None) -> torch.Tensor:
            call = calls[0]
            calls[0] += 1
            if not self.active(call):
                return feats
            positions = self.position_index(feats.shape[-2], call)
            if positions is None:
                return self.steer_features(feats)
            if not len(positions):
                return feats
            pos = positions.to(feats.device)
            feats = feats.clone()
            feats[..., pos, :] = self.steer_features(feats[..., pos, :])
            return feats

        return bridge.get_sae_hook_name(self.sae), fn

    def random_like(self, model: Any, seed: int, rng: np.random.Generator) -> FeatureIntervention:
        """The same change on as many random features of the same SAE: the paired control."""
        control = copy.copy(self)
        chosen = rng.choice(self.sae.cfg.d_sae, size=len(self.features), replace=False)
        control.features = tuple(int(f) for f in sorted(chosen))
        return control

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.sae.cfg.metadata.hook_name!r}, features={list(self.features)}, "
                f"tower={self.tower!r}, positions={self.positions!r}, calls={self.calls!r})")


def _features(features: Any, d_sae: int) -> tuple[int, ...]:
    items = [features] if isinstance(features, (int, np.integer)) else features
    try:
        items = list(items)
    except TypeError as err:
        raise InputError(f"features={features!r} must be feature indices (ints).") from err
    if not items or not all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) for f in items):
        raise InputError(f"features={features!r} must be feature indices (ints), at least one.")
    bad = [int(f) for f in items if not 0 <= f < d_sae]
    if bad:
        raise InputError(f"features {bad[:5]} are out of range: the SAE has d_sae={d_sae} (0..{d_sae - 1}).")
    return tuple(dict.fromkeys(int(f) for f in items))


class ClampFeatures(FeatureIntervention):
    """Set the chosen SAE features to ``value`` (decoded, with the error term kept).

    Example:
        >>> with model.steer(ClampFeatures(sae, [12, 40], 5.0, calls="prefill")):
        ...     action = model.predict_action(obs)
    """

    def __init__(self, sae: Any, features: int | Sequence[int], value: float, **where: Any):
        super().__init__(sae, features, **where)
        self.value = number(value, "the feature value")

    def new_values(self, selected: torch.Tensor) -> torch.Tensor:
        return torch.full_like(selected, self.value)


class ScaleFeatures(FeatureIntervention):
    """Multiply the chosen SAE features by ``factor`` (0 ablates them; 1 changes nothing).

    Example:
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:7]:
        ...         ScaleFeatures(sae, [12], 0.0).apply(model, step)
        ...     action = tracer.result.save()
    """

    def __init__(self, sae: Any, features: int | Sequence[int], factor: float, **where: Any):
        super().__init__(sae, features, **where)
        self.factor = number(factor, "the scale factor")

    def new_values(self, selected: torch.Tensor) -> torch.Tensor:
        return selected * self.factor


# -- bridges -----------------------------------------------------------------------------------------


def attach_sae(bridge: Any, sae: Any, *, use_error_term: bool = True) -> Any:
    """Attach ``sae`` at its hook point of a TransformerLens bridge with SAE-Lens's
    ``SAETransformerBridge.add_sae``; a plain `TransformerBridge` (`to_bridge`) becomes one by
    the class swap SAE-Lens's own boot performs. With ``use_error_term=True`` (the default) the
    bridge's outputs stay as they were until features are changed. Returns the bridge.

    Example:
        >>> bridge = attach_sae(to_bridge(model), sae)
        >>> logits, cache = bridge.run_with_cache(**bridge_inputs(model, obs))
        >>> cache[bridge.get_sae_hook_name(sae)]           # the features, [batch, positions, d_sae]
    """
    _check_is_sae(sae)
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(bridge, TransformerBridge):
        raise InputError(
            f"{type(bridge).__name__} is not a TransformerBridge; build one with to_bridge(model)."
        )
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise InputError("the SAE's cfg.metadata.hook_name is empty; set it to the hook it reads.")
    site = site_of(hook, "vlm")
    width = getattr(bridge.cfg, KINDS[site.kind].width)
    if sae.cfg.d_in != width:
        raise InputError(
            f"the SAE at {hook!r} has d_in={sae.cfg.d_in}, but that hook of the bridge has width "
            f"{width} ({KINDS[site.kind].width}); use an SAE trained on this model's activations."
        )
    if not isinstance(bridge, SAETransformerBridge):
        bridge.__class__ = SAETransformerBridge  # what SAETransformerBridge.boot_transformers does
        bridge._acts_to_saes = {}
        bridge._transcoder_output_hooks = {}
    if bridge._resolve_hook_name(hook) not in bridge._hook_registry and hook not in bridge._acts_to_saes:
        raise InputError(f"the bridge has no hook point {hook!r}; SAE-Lens would skip this SAE.")
    bridge.add_sae(sae, use_error_term=use_error_term)
    return bridge


def to_sae_bridge(model: Any, saes: Any, *, use_error_term: bool = True, part: str = "vlm") -> Any:
    """A bridge of ``model`` (`to_bridge`) with ``saes`` attached (`attach_sae`), each checked
    against the model's sites first.

    Example:
        >>> bridge = to_sae_bridge(model, sae)
        >>> logits = bridge(**bridge_inputs(model, obs))   # equals the plain bridge's (error term on)
    """
    items = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    if not items:
        raise InputError("no SAEs given; pass an SAE or a list of them.")
    for sae in items:
        site = sae_site(model, sae)
        if site.tower != "vlm":
            raise InputError(
                f"TransformerLens bridges cover the language model ('vlm'), not tower {site.tower!r}."
            )
    bridge = to_bridge(model, part)
    for sae in items:
        attach_sae(bridge, sae, use_error_term=use_error_term)
    return bridge


def feature_hooks(bridge: Any, interventions: Any) -> list[tuple[str, Any]]:
    """Feature interventions as ``fwd_hooks`` of an SAE bridge (`FeatureIntervention.bridge_hook`).

    Example:
        >>> bridge.run_with_hooks(**bridge_inputs(model, obs), fwd_hooks=feature_hooks(bridge, steer))
    """
    items = as_list(interventions)
    bad = [i for i in items if not isinstance(i, FeatureIntervention)]
    if bad:
        raise InputError(f"{bad[0]!r} is not a feature intervention (ClampFeatures, ScaleFeatures).")
    return [i.bridge_hook(bridge) for i in items]


# -- training ----------------------------------------------------------------------------------------


def activation_rows(model: Any, observations: Any, site: Site, *, calls: Any = "prefill",
                    positions: Any = "all", progress: bool = False, **options: Any) -> torch.Tensor:
    """The site's activations on each observation's prediction (`collect`, one observation at a
    time, so sequences of different lengths mix), as rows ``[n, width]`` (float32, CPU)."""
    if not isinstance(site, Site):
        raise InputError(f"site must be an nnsight_vla.Site, got {site!r}.")
    single = not isinstance(observations, Sequence) or isinstance(observations, str)
    items = [observations] if single else list(observations)
    if not items:
        raise InputError("observations is empty; give at least one observation.")
    site = site.on(model)
    rows = []
    for item in tqdm(items, desc="collect", unit="obs", disable=not progress):
        acts = collect(model, [item], [site], calls=calls, positions=positions, **options)[site]
        rows.append(acts.reshape(-1, acts.shape[-1]))
    return torch.cat(rows)


def _batches(rows: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled full batches of ``rows``, epoch after epoch, forever (SAE-Lens's data provider)."""
    while True:
        order = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(rows) - batch_size + 1, batch_size):
            yield rows[order[start:start + batch_size]]


def fit_sae(activations: torch.Tensor, hook_name: str, folder: str | Path, *, d_sae: int,
            steps: int = 2000, batch_size: int = 256, lr: float = 1e-3, l1_coefficient: float = 1.0,
            l1_warm_up_steps: int | None = None, normalize: bool = True, seed: int = 0,
            device: str = "cpu", tower: str = "vlm", model_name: str | None = None,
            progress: bool = True) -> Any:
    """Train a standard (ReLU, L1) SAE on ``activations`` ``[..., d_in]`` with SAE-Lens's own
    trainer (`sae_lens.SAETrainer`: its loss, optimiser, gradient clipping, L1 warm-up and
    activation scaling), save it in SAE-Lens's format to ``folder`` and return it loaded back
    from there (`load_sae`).

    Args:
        activations: Rows to train on; every leading axis is flattened.
        hook_name: The TransformerLens hook they come from (``Site.hook_name``), stored in the
            SAE's metadata.
        folder: Where ``cfg.json`` and ``sae_weights.safetensors`` go (checked first).
        d_sae: Number of features.
        steps, batch_size, lr: Training steps of ``batch_size`` shuffled rows, Adam's rate.
        l1_coefficient, l1_warm_up_steps: The sparsity penalty (on activations scaled to norm
            sqrt(d_in) when ``normalize``) and its linear warm-up (default: a tenth of the steps).
        normalize: Scale activations to mean norm sqrt(d_in) while training (SAE-Lens's
            ``expected_average_only_in``); the factor is folded into the saved weights.
        seed: Seeds the initial weights and the batch order.
        device: Where the SAE trains and is loaded back.
        tower: The tower the activations come from (stored in the metadata when not ``"vlm"``).
        model_name: Stored in the metadata (``train_sae`` stores the model's source).
        progress: Show a tqdm bar over the steps (losses in its postfix).

    Example:
        >>> rows = activation_rows(model, observations, Site(1, "resid"))
        >>> sae = fit_sae(rows, "blocks.1.hook_resid_post", "saes/resid-1", d_sae=512)
    """
    sae_lens = _sae_lens()
    from sae_lens.config import SAETrainerConfig

    folder = writable_folder(folder, "SAE folder")
    site = site_of(hook_name, tower)
    acts = torch.as_tensor(activations)
    if acts.ndim < 2 or not acts.is_floating_point():
        raise InputError(
            f"activations must be a float tensor [..., d_in], got shape {tuple(acts.shape)} ({acts.dtype})."
        )
    rows = acts.detach().reshape(-1, acts.shape[-1]).to(device=device, dtype=torch.float32)
    if not torch.isfinite(rows).all():
        raise InputError("activations hold NaN or infinite values; train on finite activations.")
    for what, value in (("d_sae", d_sae), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{what}={value!r} must be a positive int.")
    if len(rows) < batch_size:
        raise InputError(
            f"{len(rows)} activation rows are fewer than batch_size={batch_size}; collect more "
            "(more observations, positions='all') or lower batch_size."
        )
    lr, l1 = number(lr, "lr"), number(l1_coefficient, "l1_coefficient")
    warm_up = max(1, steps // 10) if l1_warm_up_steps is None else int(l1_warm_up_steps)
    metadata = {"hook_name": site.hook_name, "model_name": model_name}
    if tower != "vlm":
        metadata[TOWER_KEY] = tower
    cfg = sae_lens.StandardTrainingSAEConfig(
        d_in=rows.shape[1], d_sae=d_sae, dtype="float32", device=device,
        l1_coefficient=l1, l1_warm_up_steps=warm_up,
        normalize_activations="expected_average_only_in" if normalize else "none",
        metadata=sae_lens.saes.sae.SAEMetadata(**metadata),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = sae_lens.StandardTrainingSAE(cfg)
    data = _batches(rows, batch_size, generator)
    trainer = sae_lens.SAETrainer(
        SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
                         lr=lr, lr_end=lr, device=device),
        sae, data,
    )
    # SAETrainer.fit's loop through its public seams, with a bar that `progress` controls
    if normalize:  # SAE-Lens's estimate (sqrt(d_in) / mean norm), over every row
        mean_norm = rows.norm(dim=-1).mean().item()
        if mean_norm == 0:
            raise InputError("activations are all zero; there is nothing to train an SAE on.")
        trainer.activation_scaler.scaling_factor = cfg.d_in**0.5 / mean_norm
    bar = tqdm(range(steps), desc=f"train_sae {site.hook_name}", unit="step", disable=not progress)
    for _ in bar:
        trainer.maybe_reset_sparsity()
        out = trainer.step(next(data))
        trainer.n_training_steps += 1
        if trainer.n_training_steps % 50 == 0 or trainer.n_training_steps == steps:
            bar.set_postfix({name: f"{v.item():.4g}" for name, v in out.losses.items()})
    if trainer.activation_scaler.scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
        trainer.activation_scaler.scaling_factor = None
    trainer.set_final_sae_metadata()
    sae.eval()
    sae.save_inference_model(folder)
    return load_sae(folder, tower=tower, device=device)


def train_sae(model: Any, observations: Any, site: Site, folder: str | Path, *, d_sae: int,
              calls: Any = "prefill", positions: Any = "all", progress: bool = True,
              options: dict[str, Any] | None = None, **training: Any) -> Any:
    """Collect ``site``'s activations on ``observations`` (`activation_rows`: each prediction's
    ``calls`` and ``positions``, all as rows) and train an SAE on them (`fit_sae`, whose
    keyword arguments ``training`` takes), saved to ``folder`` and loaded back, checked
    against the model.

    Example:
        >>> sae = train_sae(model, observations, Site(1, "resid"), "saes/resid-1", d_sae=512, steps=2000)
        >>> feats = sae_features(model, sae, obs)
    """
    if not isinstance(site, Site):
        raise InputError(f"site must be an nnsight_vla.Site, got {site!r}.")
    folder = writable_folder(folder, "SAE folder")  # before any heavy work
    site = site.on(model)
    rows = activation_rows(model, observations, site, calls=calls, positions=positions,
                           progress=progress, **(options or {}))
    sae = fit_sae(rows, site.hook_name, folder, d_sae=d_sae, tower=site.tower,
                  model_name=model.name_or_path, progress=progress, **training)
    sae_site(model, sae)
    return sae


__all__ = [
    "ClampFeatures", "FeatureIntervention", "ScaleFeatures", "activation_rows", "attach_sae",
    "feature_hooks", "fit_sae", "load_sae", "sae_features", "sae_site", "sae_tower", "to_sae_bridge",
    "train_sae",
]
