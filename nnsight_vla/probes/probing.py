"""`probe_folder`: probes fitted on a folder of collected activations, and a probe as a steering direction."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Iterable

import numpy as np

from ..errors import InputError
from ..sites import Site
from ..steering import Add
from .fit import fit_probes
from .report import ProbeResults
from .store import ShardFolder

_ONE = re.compile(r"^(.+)\[(\d+)\]$")  # "action[2]": one dimension of a target


def probe_folder(folder: str | os.PathLike | ShardFolder, targets: Iterable[str] = ("action",),
                 sites: Iterable[Site] | None = None, **options: Any) -> ProbeResults:
    """Fit `fit_probes` on activations collected by `collect_to_disk` or a `RolloutCollector`.

    One probe per site, forward call and target. A target with several dimensions
    (``"action"``, ``"state"``) is probed per dimension (``action[0]`` ...; constant ones are
    left out with a warning); ``"action[2]"`` picks one. Several positions of a call are joined
    into one feature vector.

    Example:
        >>> results = probe_folder("acts/lift", targets=["action", "gripper"])
        >>> results.save("probes/lift")
    """
    targets = [targets] if isinstance(targets, str) else list(targets)  # one name is one target
    store = folder if isinstance(folder, ShardFolder) else ShardFolder.read(folder)
    data = store.load(None if sites is None else list(sites))
    stored = data["targets"]
    values: dict[str, np.ndarray] = {}
    for name in targets:
        match = _ONE.match(name)
        base, index = (match.group(1), int(match.group(2))) if match else (name, None)
        if base not in stored:
            raise InputError(f"{store.folder} holds no target {base!r}; it holds {sorted(stored)}.")
        array = stored[base]
        if index is not None:
            if array.ndim != 2 or index >= array.shape[1]:
                raise InputError(f"target {base!r} has shape {array.shape[1:]}; {name} is out of range.")
            values[name] = array[:, index]
        elif array.ndim == 1:
            values[name] = array
        else:  # every dimension that varies: a constant one (e.g. an unused rotation) has nothing to probe
            constant = [i for i in range(array.shape[1]) if np.ptp(array[:, i]) == 0]
            if constant:
                warnings.warn(f"{base}{constant} are constant in {store.folder}; they are left out.", stacklevel=2)
            values.update({f"{base}[{i}]": array[:, i] for i in range(array.shape[1]) if i not in constant})
    features = {}
    for site, acts in data["activations"].items():  # [rows, calls, positions, width]
        calls = _calls(store.manifest["calls"], acts.shape[1])
        for i, call in enumerate(calls):
            features[(site, call)] = acts[:, i].reshape(len(acts), -1)
    return fit_probes(features, values, data["episode"], **options)


def _calls(recorded: Any, count: int) -> list[int]:
    """The call indices of a collection's call axis."""
    if isinstance(recorded, list):
        return recorded
    if recorded == "prefill":
        return [0]
    return list(range(count))  # "all" and "actions" start at call 0 in every family here


def probe_steering(results: ProbeResults, site: Site | str, target: str, alpha: float, *, call: int | None = None,
                   label: Any = None, **where: Any) -> Add:
    """An `Add` along a residual-stream probe's direction, at the probe's layer and tower.

    The direction is unit-normed, so ``alpha`` is the shift's norm; ``where`` goes to `Add`
    (``positions=``, ``calls=``). Evaluate it with ``evaluate(model, suite, tasks, episodes,
    steering=...)``: the paired random control adds a random direction of the same norm.

    Example:
        >>> steering = probe_steering(results, Site(12, "resid"), "action[2]", alpha=8.0)
        >>> evaluate(model, "libero_10", [0], episodes=10, steering=steering)
    """
    site = Site.of(site)
    if site.kind != "resid":
        raise InputError(f"a steering direction lives in the residual stream; {site} is a {site.kind!r} site "
                         "(probe a 'resid' site to steer along it).")
    direction = results.direction(site, target, call=call, label=label)
    norm = float(direction.norm())
    if not norm > 0:
        raise InputError(f"the probe of {target!r} at {site} has a zero direction; it learned nothing to steer by.")
    return Add(direction / norm, layer=site.layer, alpha=alpha, tower=site.tower, **where)


def check_direction(model: Any, results: ProbeResults, site: Site, target: str, alpha: float, suite: str,
                    tasks: Any, episodes: int, *, call: int | None = None, label: Any = None, **options: Any) -> Any:
    """The closed-loop check of a probe direction in one call.

    Runs `evaluate` with `probe_steering` against the unsteered baseline and a random direction
    of the same norm (paired on init states and seeds; ``options`` go to `evaluate`, e.g.
    ``out_dir=``).

    Example:
        >>> result = check_direction(model, results, Site(12, "resid"), "action[2]", 8.0, "libero_10", [0], 10)
        >>> result.statistics["steered"]["path_length"]
    """
    from ..eval import evaluate

    steering = probe_steering(results, site, target, alpha, call=call, label=label)
    return evaluate(model, suite, tasks, episodes, steering=steering, **options)
