"""NDIF's controller with the ndif 0.1.2 / nnsight 0.8.1 skew bridged: set ``NDIF_CONTROLLER_IMPORT_PATH=nnsight_vla.ndif.controller.ControllerActor``."""

from __future__ import annotations

import functools

import ray
from ndif.services.ray.deployments.controller.controller import _ControllerActor
from nnsight.modeling.mixins.remotable import Remotable


def _drop_trust_remote_code(method):
    """``Remotable``'s classmethod ``method``, made to accept and drop ``trust_remote_code``.

    Used for ``describe_checkpoint`` and ``max_tp_size``: ndif 0.1.2 passes that keyword and
    nnsight 0.8.1 dropped it (HF's ``trust_remote_code`` is part of the model key there).
    """
    func = method.__func__
    if getattr(func, "_drops_trust_remote_code", False):
        return method

    @functools.wraps(func)
    def wrapper(cls, *args, trust_remote_code=None, **kwargs):
        return func(cls, *args, **kwargs)

    wrapper._drops_trust_remote_code = True
    return classmethod(wrapper)


def patch() -> None:
    """Apply the bridge to nnsight's ``Remotable`` in this process (idempotent)."""
    for name in ("describe_checkpoint", "max_tp_size"):
        setattr(Remotable, name, _drop_trust_remote_code(getattr(Remotable, name)))


patch()  # runs wherever Ray imports this module: the controller's worker too


class ShimControllerActor(_ControllerActor):
    """NDIF's controller; importing this module bridged the version skew."""


# Built from an undecorated, importable base: a class decorated in place is pickled by value and
# its module (and the patch above) would never be imported in the controller's worker.
ControllerActor = ray.remote(num_cpus=1, num_gpus=0, max_restarts=-1, resources={"head": 1})(
    type("ControllerActor", (ShimControllerActor,), {})
)
