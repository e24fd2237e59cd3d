"""Action-head probes: activations collected to disk, per-layer probes, probes as steering directions.

Example:
    >>> from nnsight_vla import Site, probes
    >>> sites = [Site(layer, "resid") for layer in range(model.spec.n_layers)]
    >>> store = probes.collect_to_disk(model, "data/lift", sites, "acts/lift")
    >>> results = probes.probe_folder(store, targets=["action", "gripper"])
    >>> results.save("probes/lift")                   # probes.csv, probes.json, probes.png
"""

from .collection import collect_to_disk
from .fit import fit_probes
from .probing import check_direction, probe_folder, probe_steering
from .report import ProbeResults
from .rollouts import RolloutCollector
from .sources import DatasetFrames, Frame, ObservationFrames
from .store import ShardFolder

__all__ = [
    "DatasetFrames",
    "Frame",
    "ObservationFrames",
    "ProbeResults",
    "RolloutCollector",
    "ShardFolder",
    "check_direction",
    "collect_to_disk",
    "fit_probes",
    "probe_folder",
    "probe_steering",
]
