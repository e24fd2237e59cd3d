"""Paired closed-loop evaluation: baseline vs steerings vs their random controls, with files, statistics and plots.

An evaluation with an ``out_dir`` survives interruption: it records its settings in
``run.json`` before the first rollout, appends each finished episode to ``episodes.jsonl``
at once (one line, flushed to disk), and ``resume=True`` continues from those rows, giving
the same final files as an uninterrupted run. An episode that raises is a failed row, not
the end of the evaluation.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

from ..errors import InputError
from ..paths import probed_folder
from ..steering import bind, random_control
from ..steering.controls import check_sides
from ..towers import module_of
from .config import EvalConfig
from .libero import check_task, init_state_count
from .parallel import job_order, run_parallel
from .records import (EPISODES, Job, append_row, as_json, describe_steering, episode_row, file_label, fingerprint,
                      model_identity, open_run, write_files, write_video)
from .rollout import Episode, Simulators, run_job
from .metrics import METRICS
from .stats import condition_means, paired_statistics, versus_random

#: The serial progress bar shows the step inside the episode every this many steps.
PROGRESS_EVERY = 5
_PER_TASK = re.compile(r"task(\d+)_(success_rate|episodes|failed)")


@dataclass
class EvalResult:
    """Per-episode rows, per-condition means, and paired statistics against the baseline."""

    episodes: list[dict]
    summary: dict
    statistics: dict
    out_dir: Path | None

    @property
    def per_task(self) -> dict:
        """The per-task table of `summary`.

        ``{condition: {task: {"success_rate", "episodes", "failed"}}}``, from
        ``summary[condition]["task<t>_success_rate"]`` and so on.
        """
        table: dict = {}
        for condition, values in self.summary.items():
            rows = table.setdefault(condition, {})
            for key, value in values.items():
                match = _PER_TASK.fullmatch(key)
                if match:
                    rows.setdefault(int(match[1]), {})[match[2]] = value
        return table


def evaluate(
    model: Any,
    suite: str | EvalConfig,
    tasks: int | Sequence[int] | None = None,
    episodes: int | None = None,
    steering: Any = None,
    controls: Sequence[str] = EvalConfig.controls,
    seed: int = EvalConfig.seed,
    max_steps: int | None = EvalConfig.max_steps,
    camera_size: int = EvalConfig.camera_size,
    record_video: bool = EvalConfig.record_video,
    out_dir: str | Path | None = None,
    workers: int = EvalConfig.workers,
    ray_address: str | None = EvalConfig.ray_address,
    resume: bool = False,
    collect: Any = None,
    random_controls: int = EvalConfig.random_controls,
    instruction: str | None = EvalConfig.instruction,
    simulators: Simulators | None = None,
    sides: Mapping[str, Mapping[str, int]] | None = None,
) -> EvalResult:
    """Run every condition on the same tasks, init states and seeds (a paired design).

    Conditions: ``"baseline"`` (no steering), ``"steered"`` (when ``steering`` is given) and
    ``"random"`` (its random control: `random_control`, the same intervention on random
    neurons of the same layers). ``steering`` may also be a dict ``{name: steering}``: each
    is a condition of that name, with controls ``"<name>/random<k>"``. ``random_controls=N``
    draws N controls per steering (seeds ``seed..seed+N-1``; a single steering's are then
    ``"random<k>"``), and ``statistics["vs_random"]`` scores each steering's paired shift
    against its controls' shifts (`stats.versus_random`: the z-score the paper's random
    baseline asks for, and the rank p-value, one-sided where ``sides`` says which way a
    steering should move a metric, e.g. ``{"up": {"z_displacement": 1}}``). ``tasks``: a task id or a list of them. ``episodes``
    per task are its init states ``0..episodes-1`` (at most the task's count: 50 in LIBERO).
    ``max_steps``: the step limit of an episode (None: the suite's standard limit).
    ``instruction``: said to the model instead of each task's own (e.g. a neutral
    ``"move the arm"``, so that only the steering says where to go).

    Writes ``run.json`` (the settings), ``episodes.jsonl``, ``episodes.csv``,
    ``summary.json``, ``statistics.json``, ``trajectories.png``, ``metrics.png`` and, with
    ``record_video``, ``videos/<condition>_task<t>_ep<e>.mp4`` under ``out_dir``, which is
    created and checked for writing before any rollout. Each episode's row (and video) is
    written as soon as it finishes; with ``resume=True`` a run interrupted in ``out_dir``
    continues from them (a run made with other settings is refused; one that only adds
    conditions, e.g. more ``random_controls``, keeps its rows and runs the new conditions)
    and ends with the files an uninterrupted run writes. Without ``resume`` a run in ``out_dir`` is started over.

    An episode that raises (simulator error, non-finite action, any exception of the model
    or the environment) is a failed row (``row["error"]``: its type, message and where)
    and the evaluation goes on. It counts as a failure (0) in the success rate; its other
    metrics (length, path and the rest, up to the failure) stay in its row but are left out
    of the means and of the paired tests, whose entries say how many pairs were left out.
    ``summary[condition]`` also holds ``episodes``, ``failed`` and, per task ``t``,
    ``task<t>_success_rate``, ``task<t>_episodes`` and ``task<t>_failed`` (`EvalResult.per_task`).

    With ``workers > 1`` (or a ``ray_address``) the episodes are spread over Ray worker
    processes that each load the model once from its source (a local Ray unless an address
    is given); the results equal a serial run's. A model changed in memory is refused there:
    save it and load the copy.

    ``simulators``: a `Simulators` of the same suite and camera size to reuse (serial runs
    only; the caller closes it), which saves building each task's environment again.

    ``collect`` (a `nnsight_vla.probes.RolloutCollector`) records the activations of every
    prediction with the step's action, state and pose, one shard per episode in its own
    folder (resumed and restarted with the evaluation).

    Example:
        >>> result = evaluate(model, "libero_10", [0, 1], episodes=2, steering=Clamp(up, 4.0))
        >>> result = evaluate(model, "libero_spatial", 0, episodes=2, instruction="move the arm",
        ...                   steering={"up": Clamp(up, 4.0)}, random_controls=10)
        >>> result.statistics["vs_random"]["up"]["z_displacement"]["z"]
    """
    if isinstance(suite, EvalConfig):
        if tasks is not None or episodes is not None:
            raise InputError("give the tasks and episodes in the EvalConfig, or a suite name with them, not both.")
        config = suite
    else:
        if tasks is None and episodes is None:
            raise InputError("evaluate(model, suite, tasks, episodes, ...): give the tasks and the episodes per "
                             "task, or an EvalConfig.")
        config = EvalConfig(suite, tasks, episodes, controls, random_controls, seed, max_steps, camera_size,
                            record_video, instruction, workers, ray_address)
    suite, tasks, episodes = config.suite, list(config.tasks), config.episodes
    for task in tasks:
        check_task(suite, task)
    if resume and out_dir is None:
        raise InputError("resume=True needs out_dir=, the folder of the run to continue.")
    check_simulators(simulators, suite, config.camera_size, config.parallel)
    conditions, groups = steering_conditions(model, steering, config.controls, config.random_controls, config.seed)
    sides = check_sides(sides, groups, METRICS)  # before any rollout
    check_episodes(suite, tasks, episodes)
    jobs = job_order(tasks, episodes, conditions)
    if collect is not None:
        source = {"suite": suite, "tasks": tasks, "episodes": episodes, "seed": config.seed,
                  "max_steps": config.steps, "steering": None if steering is None else describe_steering(steering)}
        if config.instruction is not None:
            source["instruction"] = config.instruction
        collect = collect.bind(model, jobs, list(conditions), source, resume)

    folder = None if out_dir is None else probed_folder(out_dir, create=True)
    rows: dict[Job, dict] = {}
    if folder is not None:
        settings = config.record(list(conditions), model_identity(model),
                                 None if steering is None else describe_steering(steering))
        rows = open_run(folder, as_json(settings), fingerprint(module_of(model)), resume, jobs)

    def on_result(job: Job, run: Episode) -> None:
        task, episode, condition = job
        row = episode_row(suite, job, run)
        if folder is not None:
            if config.record_video and run.frames:
                write_video(folder / "videos" / f"{file_label(condition)}_task{task}_ep{episode}.mp4", run.frames)
            append_row(folder / EPISODES, row)  # after its video: a row on disk means a finished episode
        run.frames = []
        rows[job] = row
        if run.failed:
            tqdm.write(f"{suite} task {task} episode {episode} ({condition}) failed after "
                       f"{run.metrics.length} steps: {run.error['type']}: {run.error['message']}",
                       file=sys.stderr)

    pending = [job for job in jobs if job not in rows]
    try:
        if not pending:
            pass
        elif config.parallel:
            run_parallel(model, pending, conditions, config, on_result=on_result, done=len(rows), collector=collect)
        else:
            _run_serial(model, pending, conditions, config, on_result=on_result, done=len(rows), collector=collect,
                        simulators=simulators)
    except BaseException as error:  # Ctrl-C and killed workers included: say how to go on
        if folder is not None:
            error.add_note(
                f"{len(rows)} of {len(jobs)} episodes are saved in {folder / EPISODES}; run the "
                "same evaluation with resume=True (CLI: --resume) to continue from them."
            )
        raise
    ordered = [rows[job] for job in jobs]
    summary = condition_means(ordered, list(conditions), tasks)
    statistics = paired_statistics(ordered, list(conditions))
    if statistics and any(len(names) > 1 for names in groups.values()):
        statistics["vs_random"] = versus_random(ordered, groups, sides)
    if folder is not None:
        write_files(folder, ordered, summary, statistics)
    return EvalResult(ordered, summary, statistics, folder)


def steering_conditions(model: Any, steering: Any, controls: tuple, random_controls: int,
                        seed: int) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The conditions of an evaluation, and each steering's random controls.

    The conditions are ``{name: steering or None}``, the controls ``{steering name: [control
    names]}``. Every steering is bound to the model first, so one that does not fit fails now,
    not mid-evaluation.
    """
    conditions: dict[str, Any] = {"baseline": None} if "baseline" in controls else {}
    if steering is None:
        return conditions, {}
    named = isinstance(steering, Mapping)
    items = dict(steering) if named else {"steered": steering}
    if named and not items:
        raise InputError("steering is an empty dict; give {name: steering}, e.g. {'up': Clamp(up, 4.0)}.")
    groups: dict[str, list[str]] = {}
    for name, value in items.items():
        if named and (not isinstance(name, str) or not name or "/" in name or name == "baseline"):
            raise InputError(f"steering name {name!r} must be a non-empty string without '/', other than "
                             "'baseline', e.g. {'up': Clamp(up, 4.0)}.")
        bind(model, value)
        conditions[name] = value
        if "random" not in controls:
            continue
        if named:
            labels = [f"{name}/random{k}" for k in range(random_controls)]
        else:
            labels = ["random"] if random_controls == 1 else [f"random{k}" for k in range(random_controls)]
        for k, label in enumerate(labels):
            conditions[label] = random_control(value, seed + k, model)
        groups[name] = labels
    return conditions, groups


def _run_serial(model, jobs, conditions, config: EvalConfig,
                on_result: Callable[[Job, Episode], None] | None = None, done: int = 0,
                collector: Any = None, simulators: Simulators | None = None) -> dict:
    """Run ``jobs`` one after another in this process; ``on_result(job, episode)`` as each finishes.

    The bar counts episodes (``done`` of them finished before: a resumed run) and shows the
    step inside the current one. ``simulators``: the caller's, left open; else this run's own,
    closed at the end.
    """
    runs, own, steps = {}, simulators is None, config.steps
    simulators = Simulators(config.suite, config.camera_size) if own else simulators
    try:
        with tqdm(total=done + len(jobs), initial=done, desc=f"{config.suite} rollouts", unit="episode") as bar:
            for job in jobs:
                task, episode, condition = job
                label = f"task {task} ep {episode} {condition}"
                bar.set_postfix_str(f"{label} step 0/{steps}")

                def progress(step: int, label: str = label) -> None:
                    if step % PROGRESS_EVERY == 0 or step == steps:
                        bar.set_postfix_str(f"{label} step {step}/{steps}")

                run = run_job(model, simulators, job, config, conditions[condition], progress, collector)
                if on_result is not None:
                    on_result(job, run)
                runs[job] = run
                bar.update(1)
    finally:
        if own:
            simulators.close()
    return runs


def check_simulators(simulators: Any, suite: str, camera_size: int, parallel: bool) -> None:
    """Raise `InputError` unless ``simulators`` is None or a `Simulators` that fits this run."""
    if simulators is None:
        return
    if not isinstance(simulators, Simulators):
        raise InputError(f"simulators must be an nnsight_vla.eval.Simulators, got {type(simulators).__name__}.")
    if (simulators.suite, simulators.camera_size) != (suite, camera_size):
        raise InputError(
            f"simulators were made for {simulators.suite} at camera_size={simulators.camera_size}, this run is "
            f"{suite} at camera_size={camera_size}; pass Simulators({suite!r}, {camera_size}) or leave it out."
        )
    if parallel:
        raise InputError("simulators= is for serial runs: Ray workers build their own; leave it out with "
                         "workers > 1 or a ray_address.")


# -- inputs ---------------------------------------------------------------------------------


def check_episodes(suite: str, tasks: Sequence[int], episodes: int) -> None:
    """Refuse more episodes than a task has init states (50 in LIBERO).

    A repeated init state would be an exact copy of an earlier episode in this deterministic
    simulator.
    """
    for task in tasks:
        count = init_state_count(suite, task)
        if episodes > count:
            raise InputError(
                f"{suite} task {task} has {count} init states, one per episode, so episodes can be "
                f"at most {count}; got {episodes}. (More would repeat init states, and a repeated "
                "episode is an exact copy of an earlier one in this deterministic simulator.)"
            )

