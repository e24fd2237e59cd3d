"""NDIF's model actor on the CPU (the stock one is CUDA-only): ``NDIF_MODEL_IMPORT_PATH=nnsight_vla.ndif.actor.CPUModelActor``."""

from __future__ import annotations

import gc
import os

import ray
import torch
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.mixins.remotable import Remotable


class CPUModelDeployment(BaseModelDeployment):
    """Loads the model key on the CPU and makes no CUDA call; parking (HOT->WARM) is off.

    Ray gives an actor of one CPU one thread (``OMP_NUM_THREADS=1``); the model runs with as
    many threads as a fresh local process would (every core this process may use, or
    ``NNSIGHT_VLA_CPU_THREADS``), so that its results equal a local run's bit for bit.
    """

    CACHEABLE = False

    def load_from_disk(self):
        """Rebuild the model from its key on the CPU, grads off (the base dispatches onto GPUs).

        torch's thread count is set first: ``NNSIGHT_VLA_CPU_THREADS``, else every core this
        process may use.
        """
        torch.set_num_threads(int(os.environ.get("NNSIGHT_VLA_CPU_THREADS", len(os.sched_getaffinity(0)))))
        model = Remotable.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, device="cpu", **self.kwargs)
        model._module.requires_grad_(False)
        return model

    def cleanup(self) -> None:
        """Reset the per-request state and collect garbage, without the base's CUDA calls."""
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


# Made from the undecorated, importable base above, so Ray pickles it by reference.
CPUModelActor = ray.remote(num_cpus=1, max_restarts=-1)(type("CPUModelActor", (CPUModelDeployment,), {}))
