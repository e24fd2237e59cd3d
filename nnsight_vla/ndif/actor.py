"""NDIF's model actor on the CPU (the stock one is CUDA-only): set ``NDIF_MODEL_IMPORT_PATH=nnsight_vla.ndif.actor.CPUModelActor``."""

from __future__ import annotations

import gc

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.mixins.remotable import Remotable


class CPUModelDeployment(BaseModelDeployment):
    """Loads the model key on the CPU and makes no CUDA call; parking (HOT->WARM) is off."""

    CACHEABLE = False

    def load_from_disk(self):
        model = Remotable.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, device="cpu", **self.kwargs)
        model._module.requires_grad_(False)
        return model

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


# The undecorated base above is importable, so Ray pickles this class by reference to it.
CPUModelActor = ray.remote(num_cpus=1, max_restarts=-1)(type("CPUModelActor", (CPUModelDeployment,), {}))
