"""Rollouts spread over Ray worker processes, each loading the model once, with serial-identical results."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from ..errors import InputError, SetupError, VLAError
from ..remote import class_path, model_key, rebuild
from ..towers import module_of
from .rollout import Episode

#: (task, episode, condition)
Job = tuple[int, int, str]


def fingerprint(module: torch.nn.Module) -> list[tuple[str, float, float]]:
    """Per tensor (name, sum, sum of squares) in float64: two copies of a model agree only if
    their weights do (an in-memory edit, such as a planted neuron, changes it)."""
    out = []
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        if not t.is_floating_point():
            t = t.double()
        out.append((name, float(t.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(t, dtype=torch.float64) ** 2)))
    return out


def same_weights(a: list, b: list, rtol: float = 1e-9) -> str | None:
    """None when two fingerprints agree; else the first tensor that differs."""
    if [n for n, *_ in a] != [n for n, *_ in b]:
        return "the tensor names"
    for (name, s1, q1), (_, s2, q2) in zip(a, b):
        if abs(s1 - s2) > rtol * max(1.0, abs(q1) ** 0.5) or abs(q1 - q2) > rtol * max(1.0, abs(q1)):
            return name
    return None


class Worker:
    """A Ray actor: rebuilds the model from its key once, keeps one simulator per task."""

    def __init__(self, suite: str, camera_size: int):
        from .rollout import Simulators

        self.simulators, self.model = Simulators(suite, camera_size), None

    def load(self, model_class: str, key: str, weights: list | None, threads: int,
             device: str | None = None) -> None:
        """Rebuild the model (a method, not ``__init__``, so its errors reach the caller intact).

        ``threads``: torch's CPU thread count, the caller's by default, because a different
        count changes float sums in the last bit and so the actions."""
        torch.set_num_threads(threads)
        self.model = rebuild(model_class, key, dispatch=True, device=device)
        if weights is not None:
            differs = same_weights(weights, fingerprint(module_of(self.model)))
            if differs:
                raise VLAError(
                    f"the worker's copy of the model, loaded from {self.model.name_or_path!r}, has "
                    f"different weights than the caller's ({differs}): the model was changed in "
                    "memory. Save it with model.save_pretrained(DIR) and evaluate nnsight_vla.load(DIR)."
                )

    def run(self, job: Job, steps: int, steering: Any, seed: int, record_video: bool, collector: Any = None,
            instruction: str | None = None):
        """One job, as a serial run does it (`rollout.run_job`): an episode that raises comes
        back as a failed `Episode`; the worker writes only the collector's shard."""
        from .rollout import run_job

        start = time.time()
        run = run_job(self.model, self.simulators, job, steps, steering, seed, record_video, collector=collector,
                      instruction=instruction)
        return job, run, (start, time.time(), os.getpid())

    def close(self) -> None:
        self.simulators.close()


def run_parallel(
    model: Any,
    jobs: list[Job],
    conditions: dict[str, Any],
    *,
    suite: str,
    steps: int,
    seed: int,
    camera_size: int,
    record_video: bool,
    workers: int,
    address: str | None = None,
    worker_options: dict | None = None,
    check_weights: bool = True,
    threads: int | None = None,
    timings: list | None = None,
    on_result: Callable[[Job, Episode], None] | None = None,
    done: int = 0,
    collector: Any = None,
    instruction: str | None = None,
) -> dict[Job, Episode]:
    """Run ``jobs`` on ``workers`` (>= 1) Ray actors; returns the episodes by job, as a serial run would.

    A local Ray is started when none is running and ``address`` is None; otherwise Ray
    connects to ``address`` (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``), whose nodes
    need nnsight-vla and LIBERO installed. ``worker_options`` go to ``actor.options`` (e.g.
    ``{"num_gpus": 1}``); workers put the model on the caller's device. Workers use
    ``threads`` CPU threads for torch (default: as many as the caller, which keeps results
    bit-identical to a serial run). When ``timings`` is a list, each episode's wall-clock
    ``(start, end, worker pid)`` is appended to it.

    ``on_result(job, episode)`` is called in this process as each episode arrives (the
    workers write nothing; `evaluate` appends the row to ``episodes.jsonl`` there). An
    episode that raised on a worker arrives as a failed `Episode`; a worker that dies stops
    the run with a `VLAError` (the episodes that arrived before are kept by ``on_result``).
    ``done``: jobs finished before (a resumed run), for the progress bar. ``collector``: a
    bound `nnsight_vla.probes.RolloutCollector`; each worker writes its episodes' shards.
    ``instruction``: said instead of each task's own (None: the task's).
    """
    try:
        import ray
    except ImportError as error:
        raise SetupError("parallel rollouts need Ray; run `make env` (it installs ray).") from error
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address is None:
            # "local": always a fresh Ray of our own, never a cluster some other process left
            # recorded in /tmp/ray (ray.init() alone would join that one)
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            check_reachable(address)
            ray.init(address=address, log_to_driver=False)
    actors = []
    try:
        weights = fingerprint(module_of(model)) if check_weights else None
        options = {"num_cpus": 1, **(worker_options or {})}
        remote = ray.remote(Worker).options(**options)
        key = model_key(model)
        actors = [remote.remote(suite, camera_size) for _ in range(min(workers, len(jobs)))]
        threads = threads or torch.get_num_threads()
        loads = [a.load.remote(class_path(model), key, weights, threads, model.target_device) for a in actors]
        try:
            ray.get(loads)
        except ray.exceptions.RayTaskError as error:
            raise _cause(error) from error
        return _dispatch(ray, actors, jobs, conditions, steps, seed, record_video, timings, on_result, done,
                         collector, instruction)
    finally:
        for actor in actors:
            try:
                ray.get(actor.close.remote())
            except Exception:  # an actor that failed to start has nothing to close
                pass
            ray.kill(actor)
        if started:
            ray.shutdown()


def _dispatch(ray, actors, jobs, conditions, steps, seed, record_video, timings, on_result=None,
              done_before=0, collector=None, instruction=None) -> dict[Job, Episode]:
    """Keep every actor busy; an idle actor takes the next job of a task it has a simulator for."""
    pending, running, done = list(jobs), {}, {}
    has: dict[Any, set[int]] = {a: set() for a in actors}

    def submit(actor) -> None:
        job = next((j for j in pending if j[0] in has[actor]), pending[0])
        pending.remove(job)
        has[actor].add(job[0])
        ref = actor.run.remote(job, steps, conditions[job[2]], seed, record_video, collector, instruction)
        running[ref] = actor

    with tqdm(total=done_before + len(jobs), initial=done_before, desc=f"rollouts on {len(actors)} workers",
              unit="episode") as bar:
        for actor in actors:
            if pending:
                submit(actor)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(ref)
            try:
                job, episode, span = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                raise VLAError(
                    f"a Ray worker stopped before finishing its episode ({type(error).__name__}: "
                    f"{error}); rerun the evaluation with resume=True (CLI --resume) to continue "
                    "from the episodes already written."
                ) from error
            except ray.exceptions.RayTaskError as error:
                raise _cause(error) from error
            if on_result is not None:
                on_result(job, episode)
            done[job] = episode
            if timings is not None:
                timings.append(span)
            bar.update(1)
            if pending:
                submit(actor)
    return done


def _cause(error: Exception) -> Exception:
    """The worker's own exception (a VLAError keeps its type and message), else the Ray error."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise `InputError` when nothing listens at a ``[ray://]HOST:PORT`` address (Ray itself
    would retry for minutes); ``"auto"`` and other forms are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise InputError(
            f"no Ray cluster answers at {address!r} ({error.strerror or error}); start one with "
            "`ray start --head` and pass its address, or leave ray_address out for a local Ray."
        ) from error


def job_order(tasks: Iterable[int], episodes: int, conditions: Iterable[str]) -> list[Job]:
    """Jobs in the order a serial run takes them."""
    conditions = list(conditions)
    return [(t, e, c) for t in tasks for e in range(episodes) for c in conditions]
