"""`collect`: activations at sites over chosen forward calls and positions, one prediction per batch of observations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import InputError
from .schedule import Calls, Positions
from .sites import Site, hooked

class _Done(Exception):
    """Raised by a hook once every wanted call was seen: the rest of the prediction is skipped."""


def wanted_calls(model: Any, site: Site, calls: Any) -> list[int] | None:
    """The forward calls of ``site`` that ``calls`` selects (`Calls`; None: all of them).

    ``None`` (`collect`'s default) is ``"actions"`` on a tower that emits actions and
    ``"all"`` on one that does not (Pi0's VLM, run once).
    """
    schedule = model.schedule()[site.tower]
    if calls is None:
        calls = "all" if schedule.actions is None else "actions"
    chosen = Calls.parse(calls).resolve(schedule)
    return None if chosen is None else list(chosen)


def _check_positions(positions: Any, batch_size: int) -> Positions:
    positions = Positions.parse(positions)
    if batch_size > 1 and not positions.from_the_end:
        raise InputError(
            f"positions={positions} with batch_size={batch_size}: batched rows are padded, so only "
            "positions counted from the end ('last' or negative indices) are exact; use batch_size=1."
        )
    return positions


class Recorder:
    """Records, per prediction, the activations at ``sites`` over chosen calls and positions.

    The calls and positions are the arguments of `collect`, checked once. Used by `collect`
    and by collectors that must see the prediction's own output too (rollouts).

    Example:
        >>> recorder = Recorder(model, [Site(1, "resid")], calls="actions", positions="last")
        >>> with recorder.prediction() as got:
        ...     action = model.predict_action(obs)
        >>> got.activations[Site(1, "resid")].shape       # [1, calls, positions, width]
    """

    def __init__(self, model: Any, sites: Site | str | Iterable[Site | str], *, calls: Any = None,
                 positions: Any = "last", batch_size: int = 1):
        chosen = [sites] if isinstance(sites, (Site, str)) else list(sites)
        if not chosen:
            raise InputError("sites is empty; give at least one nnsight_vla.Site, e.g. Site(1, 'resid').")
        chosen = [Site.of(s, "each of sites") for s in chosen]
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size={batch_size!r} must be a positive int.")
        self.model, self.positions = model, _check_positions(positions, batch_size)
        self.sites = list(dict.fromkeys(site.on(model) for site in chosen))
        self.wanted = {site: wanted_calls(model, site, calls) for site in self.sites}
        self.finite = all(w is not None for w in self.wanted.values())

    @contextlib.contextmanager
    def prediction(self, stop_early: bool = False) -> Iterator[SimpleNamespace]:
        """Hooks for one prediction; on exit ``got.activations`` holds each site's activations.

        Per site, a float32 CPU tensor ``[batch, calls, positions, width]``. ``stop_early``:
        end the prediction (silently) once every wanted call was seen.
        """
        seen: dict[Site, dict[int, torch.Tensor]] = {site: {} for site in self.sites}
        ran = dict.fromkeys(self.sites, 0)
        got = SimpleNamespace(activations=None)

        def record(x: torch.Tensor, call: int, site: Site) -> None:
            want = self.wanted[site]
            ran[site] = call + 1
            if want is None or call in want:
                # a copy: some families add into a module's output in place after the hook (SmolVLA)
                seen[site][call] = self.positions.select(x, call).detach().to("cpu", torch.float32, copy=True)
                if stop_early and self.finite and all(len(seen[s]) == len(self.wanted[s]) for s in self.sites):
                    raise _Done
            return None

        fns = {site: (lambda x, call, site=site: record(x, call, site)) for site in self.sites}
        try:
            with hooked(self.model, fns):
                yield got
        except _Done:
            pass
        got.activations = {site: _stack(site, seen[site], self.wanted[site], ran[site]) for site in self.sites}


def collect(
    model: Any,
    observations: Any,
    sites: Site | str | Iterable[Site | str],
    *,
    calls: Any = None,
    positions: Any = "last",
    batch_size: int = 1,
    progress: bool = False,
    **options: Any,
) -> dict[Site, torch.Tensor]:
    """Activations at ``sites`` during ``model.predict_action`` on each observation.

    Args:
        model: A loaded `nnsight_vla.VLA` (lazy ones are dispatched).
        observations: One observation or a sequence of them.
        sites: `Site` objects (``Site(20, "resid")``, ``Site(1, "neurons", "expert")``) or
            their text (``"expert.1.neurons"``).
        calls: Which forward calls of each site (`nnsight_vla.schedule.Calls`, as for
            interventions): ``"all"``, ``"prefill"`` (the first), ``"actions"`` (those emitting
            actions, per the family), call indices or a slice; by default the action calls, or
            every call of a tower that emits no actions. A prediction stops early once every
            wanted call was seen.
        positions: ``"last"`` (the default), ``"all"``, ``"mean"`` (over the sequence),
            ``"prefix"`` (the prefill's positions) or indices (`nnsight_vla.schedule.Positions`).
        batch_size: Observations per prediction (rows are padded: then only positions
            counted from the end are allowed).
        progress: Show a tqdm bar over batches.
        **options: Passed to ``predict_action`` (e.g. ``seed=`` for Pi0).

    Returns:
        Per site, a float32 CPU tensor ``[observations, calls, positions, width]``, in
        `Activations` (a dict that also finds a site by a negative layer or by its text).

    Example:
        >>> acts = collect(model, [obs1, obs2], [Site(1, "resid")], calls="actions", positions="last")
        >>> acts[Site(1, "resid")].shape        # OpenVLA: one call per action dimension
        torch.Size([2, 7, 1, 64])
    """
    items = list(observations) if isinstance(observations, Sequence) and not isinstance(observations, str) else [observations]
    if not items:
        raise InputError("observations is empty; give at least one observation.")
    recorder = Recorder(model, sites, calls=calls, positions=positions, batch_size=batch_size)
    rows: dict[Site, list[torch.Tensor]] = {site: [] for site in recorder.sites}
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in tqdm(batches, desc="collect", unit="batch", disable=not progress):
        with recorder.prediction(stop_early=True) as got:
            model.predict_action(batch, **options)
        for site in recorder.sites:
            rows[site].append(got.activations[site])
    layers = {site.tower: site.tower_of(model).n_layers for site in recorder.sites}
    return Activations({site: concat(site, parts) for site, parts in rows.items()}, layers)


class Activations(dict):
    """`collect`'s result: per site, its activations.

    A site is found as it was asked for too: ``acts[Site(-1)]`` and ``acts["vlm.-1.resid"]``
    are ``acts[Site(n_layers - 1)]``.

    Example:
        >>> acts = collect(model, obs, [Site(-1, "resid")])
        >>> acts[Site(-1, "resid")].shape
    """

    def __init__(self, items: dict, layers: dict[str, int]):
        super().__init__(items)
        self.layers = layers  # tower -> its number of layers, to count negative layers from

    def _key(self, key: Any) -> Any:
        if isinstance(key, (Site, str)) and key not in self.keys():
            try:
                site = Site.of(key)
            except InputError:
                return key
            if site.layer < 0 and site.tower in self.layers:
                return Site(site.layer + self.layers[site.tower], site.kind, site.tower)
            return site
        return key

    def __missing__(self, key: Any) -> torch.Tensor:
        site = self._key(key)
        if site is key or not dict.__contains__(self, site):
            raise KeyError(f"{key!r} was not collected; the sites are {[str(s) for s in self]}")
        return dict.__getitem__(self, site)

    def __contains__(self, key: Any) -> bool:
        return dict.__contains__(self, self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        """``self[key]``, finding a site as ``[]`` does (negative layer, text), else ``default``."""
        return self[key] if key in self else default


def concat(site: Site, parts: list[torch.Tensor]) -> torch.Tensor:
    """Rows of several predictions as one tensor; different lengths get a clear error."""
    shapes = sorted({tuple(p.shape[1:]) for p in parts})
    if len(shapes) > 1:
        raise InputError(
            f"{site}: the observations give different shapes {shapes} (prompts of different "
            "lengths); use positions='last', 'mean' or negative indices, or one observation at a time."
        )
    return torch.cat(parts)


def _stack(site: Site, seen: dict[int, torch.Tensor], want: list[int] | None, ran: int) -> torch.Tensor:
    missing = [c for c in want or [] if c not in seen]
    if missing or not seen:
        raise InputError(
            f"{site}: calls {missing or want} never ran; a prediction ran it {ran} time(s)"
            + (f" (calls 0..{ran - 1})." if ran else ": it does not run in a prediction.")
        )
    parts = [seen[c] for c in (want or sorted(seen))]
    if len({p.shape for p in parts}) > 1:
        raise InputError(
            f"{site}: the chosen calls have different lengths {sorted({p.shape[1] for p in parts})} "
            "(a prefill and decoding steps); use positions='last', 'mean' or indices, or one call."
        )
    return torch.stack(parts, dim=1)
