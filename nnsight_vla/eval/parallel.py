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
from .config import EvalConfig
from .records import Job, fingerprint, same_weights
from .rollout import Episode

class Worker:
    """A Ray actor: rebuilds the model from its key once, keeps one simulator per task."""

    def __init__(self, config: EvalConfig):
        from .rollout import Simulators

        self.config, self.simulators, self.model = config, Simulators(config.suite, config.camera_size), None

    def load(self, model_class: str, key: str, weights: list | None, threads: int,
             device: str | None = None) -> None:
        """Rebuild the model (a method, not ``__init__``, so its errors reach the caller intact).

        ``threads``: torch's CPU thread count, the caller's by default, because a different
        count changes float sums in the last bit and so the actions.
        """
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

    def run(self, job: Job, steering: Any, collector: Any = None):
        """One job, as a serial run does it (`rollout.run_job`).

        An episode that raises comes back as a failed `Episode`; the worker writes only the
        collector's shard.
        """
        from .rollout import run_job

        start = time.time()
        run = run_job(self.model, self.simulators, job, self.config, steering, collector=collector)
        return job, run, (start, time.time(), os.getpid())

    def close(self) -> None:
        """Close the worker's simulators."""
        self.simulators.close()


def run_parallel(
    model: Any,
    jobs: list[Job],
    conditions: dict[str, Any],
    config: EvalConfig,
    *,
    worker_options: dict | None = None,
    check_weights: bool = True,
    threads: int | None = None,
    timings: list | None = None,
    on_result: Callable[[Job, Episode], None] | None = None,
    done: int = 0,
    collector: Any = None,
) -> dict[Job, Episode]:
    """Run ``jobs`` on ``config.workers`` (>= 1) Ray actors; returns the episodes by job.

    The episodes are those a serial run would return. A local Ray is started when none is
    running and ``config.ray_address`` is None; otherwise Ray connects to that address
    (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``), whose nodes need nnsight-vla and
    LIBERO installed. ``worker_options`` go to ``actor.options`` (e.g. ``{"num_gpus": 1}``);
    workers put the model on the caller's device. Workers use ``threads`` CPU threads for torch
    (default: as many as the caller, which keeps results bit-identical to a serial run). When
    ``timings`` is a list, each episode's wall-clock ``(start, end, worker pid)`` is appended
    to it.

    ``on_result(job, episode)`` is called in this process as each episode arrives (the
    workers write nothing; `evaluate` appends the row to ``episodes.jsonl`` there). An
    episode that raised on a worker arrives as a failed `Episode`; a worker that dies stops
    the run with a `VLAError` (the episodes that arrived before are kept by ``on_result``).
    ``done``: jobs finished before (a resumed run), for the progress bar. ``collector``: a
    bound `nnsight_vla.probes.RolloutCollector`; each worker writes its episodes' shards.
    """
    try:
        import ray
    except ImportError as error:
        raise SetupError("parallel rollouts need Ray; run `make env` (it installs ray).") from error
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if config.ray_address is None:
            # "local": always a fresh Ray of our own, never a cluster some other process left
            # recorded in /tmp/ray (ray.init() alone would join that one)
            ray.init(address="local", num_cpus=config.workers, include_dashboard=False, log_to_driver=False)
        else:
            check_reachable(config.ray_address)
            ray.init(address=config.ray_address, log_to_driver=False)
    actors = []
    try:
        weights = fingerprint(module_of(model)) if check_weights else None
        options = {"num_cpus": 1, **(worker_options or {})}
        remote = ray.remote(Worker).options(**options)
        key = model_key(model)
        actors = [remote.remote(config) for _ in range(min(config.workers, len(jobs)))]
        threads = threads or torch.get_num_threads()
        loads = [a.load.remote(class_path(model), key, weights, threads, model.target_device) for a in actors]
        try:
            ray.get(loads)
        except ray.exceptions.RayTaskError as error:
            raise _cause(error) from error
        return _dispatch(ray, actors, jobs, conditions, timings, on_result, done, collector)
    finally:
        for actor in actors:
            try:
                ray.get(actor.close.remote())
            except Exception:  # an actor that failed to start has nothing to close
                pass
            ray.kill(actor)
        if started:
            ray.shutdown()


def _dispatch(ray, actors, jobs, conditions, timings, on_result=None, done_before=0,
              collector=None) -> dict[Job, Episode]:
    """Keep every actor busy; an idle actor takes the next job of a task it has a simulator for."""
    pending, running, done = list(jobs), {}, {}
    has: dict[Any, set[int]] = {a: set() for a in actors}

    def submit(actor) -> None:
        job = next((j for j in pending if j[0] in has[actor]), pending[0])
        pending.remove(job)
        has[actor].add(job[0])
        ref = actor.run.remote(job, conditions[job[2]], collector)
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
    """Raise `InputError` when nothing listens at a ``[ray://]HOST:PORT`` address.

    Ray itself would retry for minutes. ``"auto"`` and other forms are left to Ray.
    """
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
