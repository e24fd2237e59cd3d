"""Training SAE-Lens sparse autoencoders on a VLA site's activations collected by `collect`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..collect import collect
from ..errors import InputError
from ..paths import writable_folder
from ..sites import Site
from ..steering.interventions import number
from .sae import TOWER_KEY, _sae_lens, load_sae, sae_site

def activation_rows(model: Any, observations: Any, site: Site, *, calls: Any = "prefill",
                    positions: Any = "all", progress: bool = False, **options: Any) -> torch.Tensor:
    """The site's activations on each observation's prediction, as rows ``[n, width]``.

    They are collected (`collect`) one observation at a time, so sequences of different
    lengths mix; the rows are float32, on the CPU.
    """
    site = Site.of(site)
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
    """Train a standard (ReLU, L1) SAE on ``activations`` ``[..., d_in]`` with SAE-Lens's trainer.

    The trainer is SAE-Lens's own (`sae_lens.SAETrainer`: its loss, optimiser, gradient
    clipping, L1 warm-up and activation scaling). The SAE is saved in SAE-Lens's format to
    ``folder`` and returned loaded back from there (`load_sae`).

    Args:
        activations: Rows to train on; every leading axis is flattened.
        hook_name: The TransformerLens hook they come from (``Site.hook_name``), stored in the
            SAE's metadata.
        folder: Where ``cfg.json`` and ``sae_weights.safetensors`` go (checked first).
        d_sae: Number of features.
        steps: Training steps, each on ``batch_size`` shuffled rows.
        batch_size: Shuffled rows per training step.
        lr: Adam's learning rate.
        l1_coefficient: The sparsity penalty (on activations scaled to norm sqrt(d_in) when
            ``normalize``).
        l1_warm_up_steps: Steps of the penalty's linear warm-up (default: a tenth of the steps).
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
    site = Site.parse(hook_name, tower)
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
    """Collect ``site``'s activations on ``observations`` and train an SAE on them.

    The activations are `activation_rows`' (each prediction's ``calls`` and ``positions``, all
    as rows); the training is `fit_sae`'s, whose keyword arguments ``training`` takes. The SAE
    is saved to ``folder`` and loaded back, checked against the model.

    Example:
        >>> sae = train_sae(model, observations, Site(1, "resid"), "saes/resid-1", d_sae=512, steps=2000)
        >>> feats = sae_features(model, sae, obs)
    """
    site = Site.of(site)
    folder = writable_folder(folder, "SAE folder")  # before any heavy work
    site = site.on(model)
    rows = activation_rows(model, observations, site, calls=calls, positions=positions,
                           progress=progress, **(options or {}))
    sae = fit_sae(rows, site.hook_name, folder, d_sae=d_sae, tower=site.tower,
                  model_name=model.name_or_path, progress=progress, **training)
    sae_site(model, sae)
    return sae


__all__ = ["activation_rows", "fit_sae", "train_sae"]
