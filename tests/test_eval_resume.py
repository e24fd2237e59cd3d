"""Evaluations that survive: a failed episode is a row, an interrupted run resumes to the same files,
bad settings and folders are refused before any rollout."""

import contextlib
import dataclasses
import importlib
import io
import json

import numpy as np
import pytest

import nnsight_vla
from nnsight_vla import InputError, NeuronCluster
from nnsight_vla.cli import main, parse_steer
from nnsight_vla.eval import EvalConfig, Simulators, evaluate
from nnsight_vla.eval import rollout as rollout_module
from nnsight_vla.eval.evaluate import EvalResult
from nnsight_vla.eval.records import rows_csv
from nnsight_vla.eval.stats import condition_means, paired_statistics
from nnsight_vla.eval.plots import plot_metrics, plot_trajectories

pytestmark = pytest.mark.xdist_group("eval_resume")  # one worker builds the module's fixtures

evaluate_module = importlib.import_module("nnsight_vla.eval.evaluate")  # the package exports the function

SUITE = "libero_spatial"
STEPS = 3
SETTINGS = {"episodes": 1, "max_steps": STEPS, "camera_size": 64, "seed": 7}
FAIL = (0, 0, "steered")  # this job's model gives a NaN action at step 2
INTERRUPT_AT = 4  # Ctrl-C as the 4th job starts: 3 episodes (the failed one among them) are saved
JOBS = 2 * 1 * 3  # tasks x episodes x conditions


class Sentinel(BaseException):
    """Raised by a stand-in simulator factory: it shows how far an evaluation got."""


def cli_args(spec, out, *extra):
    return ["eval", "tiny-openvla", "--suite", SUITE, "--tasks", "0,1", "--episodes", "1", "--steer", spec,
            "--max-steps", str(STEPS), "--camera-size", "64", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run, and the same run interrupted after 3 episodes and resumed, both
    in the real simulator with a NaN action injected into one job (each episode costs about
    10 s here, mostly lerobot's reset). The three runs share their simulators (`Simulators`),
    so a resumed run also shows that an environment used before gives the same episodes."""
    folder = tmp_path_factory.mktemp("eval")
    NeuronCluster([(1, 3), (1, 17)], name="up_2", tokens=[["up"], ["up"]], d_mlp=256).to_yaml(folder / "c.yaml")
    spec = f"{folder / 'c.yaml'}#up_2:8.0"
    model = nnsight_vla.load("tiny-openvla")
    steering = parse_steer(spec, model)
    state = {"job": None, "calls": 0, "interrupt_at": None}
    real_run_job, real_actions = evaluate_module.run_job, rollout_module.env_actions

    def run_job(model, simulators, job, *args, **kwargs):
        state["calls"] += 1
        if state["calls"] == state["interrupt_at"]:
            raise KeyboardInterrupt
        state["job"] = job
        return real_run_job(model, simulators, job, *args, **kwargs)

    def env_actions(model, raw, task, seed=0):
        actions = np.asarray(real_actions(model, raw, task, seed), dtype=np.float64)
        return actions * np.nan if state["job"] == FAIL and seed == SETTINGS["seed"] + 2 else actions

    patch = pytest.MonkeyPatch()
    patch.setattr(evaluate_module, "run_job", run_job)
    patch.setattr(rollout_module, "env_actions", env_actions)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), Simulators(SUITE, SETTINGS["camera_size"]) as simulators:
            whole = evaluate(model, SUITE, [0, 1], steering=steering, out_dir=folder / "whole", simulators=simulators,
                             **SETTINGS)
            state.update(calls=0, interrupt_at=INTERRUPT_AT)
            with pytest.raises(KeyboardInterrupt) as interrupted:
                evaluate(model, SUITE, [0, 1], steering=steering, out_dir=folder / "resumed", simulators=simulators,
                         **SETTINGS)
            episodes = folder / "resumed" / "episodes.jsonl"
            saved = episodes.read_text().splitlines()
            with open(episodes, "a") as f:
                f.write('{"suite": "libero_spatial", "task": 1, "epis')  # a line cut short by a kill
            state.update(calls=0, interrupt_at=None)
            resumed = evaluate(model, SUITE, [0, 1], steering=steering, out_dir=folder / "resumed",
                               resume=True, simulators=simulators, **SETTINGS)
    finally:
        patch.undo()
    return {"model": model, "steering": steering, "spec": spec, "whole": whole, "resumed": resumed,
            "saved": saved, "resumed_calls": state["calls"], "interrupted": interrupted.value,
            "stderr": stderr.getvalue(), "folder": folder}


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_failed_episode_is_a_row_and_the_run_goes_on(runs):
    whole: EvalResult = runs["whole"]
    rows = {(r["task"], r["episode"], r["condition"]): r for r in whole.episodes}
    assert len(rows) == JOBS
    failed = rows[FAIL]
    assert failed["error"]["type"] == "VLAError" and "not finite" in failed["error"]["message"]
    assert failed["error"]["where"].startswith("rollout.py:")
    assert not failed["success"] and failed["length"] == 2  # the steps taken before the NaN
    assert len(failed["actions"]) == 2 and len(failed["path"]) == 3
    assert all(r["error"] is None and r["length"] == STEPS for k, r in rows.items() if k != FAIL)
    steered = [r for r in whole.episodes if r["condition"] == "steered"]
    kept = [r for r in steered if r["error"] is None]
    summary = whole.summary["steered"]
    assert (summary["episodes"], summary["failed"]) == (2, 1)
    assert summary["success"] == np.mean([r["success"] for r in steered])  # the failure counts as 0
    assert summary["path_length"] == pytest.approx(np.mean([r["path_length"] for r in kept]))  # left out
    assert summary["length"] == STEPS
    assert whole.per_task["steered"] == {0: {"success_rate": 0.0, "episodes": 1, "failed": 1},
                                         1: {"success_rate": 0.0, "episodes": 1, "failed": 0}}
    assert whole.summary["baseline"]["failed"] == 0 and whole.summary["baseline"]["task1_episodes"] == 1
    stats = whole.statistics["steered"]
    assert stats["path_length"]["n"] == 1 and stats["path_length"]["failed_pairs_left_out"] == 1
    assert stats["path_length"]["note"] == "one pair: no test"
    assert stats["success"]["n"] == 2 and "failed_pairs_left_out" not in stats["success"]
    assert whole.statistics["random"]["path_length"]["n"] == 2
    on_disk = json.loads((whole.out_dir / "summary.json").read_text())
    assert set(on_disk) == {"baseline", "steered", "random"} and on_disk["steered"]["task0_failed"] == 1
    csv_rows = (whole.out_dir / "episodes.csv").read_text().splitlines()
    assert csv_rows[0].endswith("error_type,error_message,error_where")
    assert sum(",VLAError," in line for line in csv_rows) == 1
    assert "task 0 episode 0 (steered) failed after 2 steps: VLAError" in runs["stderr"]


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_files(runs):
    assert len(runs["saved"]) == INTERRUPT_AT - 1
    assert any('"steered"' in line and '"VLAError"' in line for line in runs["saved"])  # kept, not rerun
    assert runs["resumed_calls"] == JOBS - (INTERRUPT_AT - 1)  # only the missing episodes ran
    assert any("resume=True" in note for note in runs["interrupted"].__notes__)
    assert runs["resumed"].episodes == runs["whole"].episodes
    whole, resumed = files(runs["folder"] / "whole"), files(runs["folder"] / "resumed")
    assert set(whole) == set(resumed) == {"run.json", "episodes.jsonl", "episodes.csv", "summary.json",
                                          "statistics.json", "trajectories.png", "metrics.png"}
    for name in whole:
        assert resumed[name] == whole[name], name


@pytest.mark.slow
def test_the_bar_shows_steps_inside_an_episode(runs):
    assert f"task 1 ep 0 random step {STEPS}/{STEPS}" in runs["stderr"]
    assert f"task 0 ep 0 baseline step 0/{STEPS}" in runs["stderr"]


@pytest.mark.slow
def test_resume_refuses_other_settings_and_changes_nothing(runs):
    folder = runs["folder"] / "resumed"
    before = files(folder)
    model, steering = runs["model"], runs["steering"]
    with pytest.raises(InputError, match=r"other settings \(max_steps: recorded 3, now 5\)"):
        evaluate(model, SUITE, [0, 1], steering=steering, out_dir=folder, resume=True, **{**SETTINGS, "max_steps": 5})
    with pytest.raises(InputError, match=r"steering: recorded .*pass resume=False"):
        evaluate(model, SUITE, [0, 1], steering=nnsight_vla.Clamp(steering.cluster, 2.0), out_dir=folder,
                 resume=True, **SETTINGS)
    with pytest.raises(InputError, match=r"tasks: recorded \[0, 1\], now \[1\]"):
        evaluate(model, SUITE, 1, steering=steering, out_dir=folder, resume=True, **SETTINGS)
    # the same refusals from the settings object, which the keyword forms build
    config = EvalConfig(SUITE, [0, 1], **SETTINGS)
    assert json.loads((folder / "run.json").read_text())["settings"]["max_steps"] == config.steps == 3
    with pytest.raises(InputError, match=r"other settings \(max_steps: recorded 3, now 5\)"):
        evaluate(model, dataclasses.replace(config, max_steps=5), steering=steering, out_dir=folder, resume=True)
    with pytest.raises(InputError, match=r"tasks: recorded \[0, 1\], now \[1\]"):
        evaluate(model, dataclasses.replace(config, tasks=(1,)), steering=steering, out_dir=folder, resume=True)
    with pytest.raises(InputError, match="give the tasks and episodes in the EvalConfig"):
        evaluate(model, config, [0], 1, steering=steering, out_dir=folder, resume=True)
    assert files(folder) == before


@pytest.mark.slow
def test_cli_resume_of_a_finished_run_prints_the_task_table(runs, monkeypatch, capsys):
    def no_rollouts(*args, **kwargs):
        raise AssertionError("a finished run has nothing left to run")

    monkeypatch.setattr(evaluate_module, "run_job", no_rollouts)
    out = runs["folder"] / "resumed"
    assert main(cli_args(runs["spec"], out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "steered" in printed and "(2 episodes, 1 failed)" in printed
    assert "success rate per task" in printed
    assert [line.split()[0] for line in printed.splitlines() if line[:1].isdigit()] == ["0", "1"]
    assert "0.00 of 1, 1 failed" in printed
    assert files(out) == files(runs["folder"] / "whole")


@pytest.fixture
def no_simulator(monkeypatch):
    """make_env raises `Sentinel` with its arguments: whatever reaches it got past every check."""

    def make_env(suite, task, camera_size=256):
        raise Sentinel(suite, task)

    monkeypatch.setattr(rollout_module, "make_env", make_env)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"episodes": 51}, "task 0 has 50 init states"), ({"max_steps": 0}, "max_steps must be at least 1, got 0"),
     ({"max_steps": -1}, "max_steps must be at least 1, got -1"), ({"max_steps": 2.5}, "max_steps must be an int"),
     ({"episodes": 1.0}, "episodes must be an int"), ({"tasks": "0"}, "tasks must be a task id or a list"),
     ({"tasks": 0.5}, "tasks must be a task id"), ({"tasks": None}, "tasks must be a task id"),
     ({"tasks": [0.5]}, "tasks must be ints"), ({"tasks": ["0"]}, "tasks must be ints"),
     ({"tasks": [True]}, "tasks must be ints"), ({"tasks": []}, "tasks is empty"),
     ({"tasks": [1, 1]}, r"lists \[1\] more than once"), ({"resume": True}, "resume=True needs out_dir")],
)
def test_bad_counts_and_tasks_are_refused(tiny, no_simulator, kwargs, message):
    args = {"suite": SUITE, "tasks": [0], "episodes": 1, **kwargs}
    with pytest.raises(InputError, match=message):
        evaluate(tiny, **args)


def test_an_int_task_is_accepted(tiny, no_simulator, tmp_path):
    with pytest.raises(Sentinel) as reached:
        evaluate(tiny, SUITE, 3, 50, max_steps=1, out_dir=tmp_path / "run")
    assert reached.value.args == (SUITE, 3)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["tasks"] == [3]


def test_an_unwritable_folder_is_refused_before_any_rollout(tiny, no_simulator, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker, blocker / "run"):
        with pytest.raises(InputError, match=f"{out}.*(is a file, not a folder|not writable)"):
            evaluate(tiny, SUITE, [0], 1, out_dir=out)


def test_resuming_a_folder_without_a_manifest_is_refused(tiny, no_simulator, tmp_path):
    (tmp_path / "episodes.jsonl").write_text('{"task": 0, "episode": 0, "condition": "baseline"}\n')
    with pytest.raises(InputError, match="no run.json"):
        evaluate(tiny, SUITE, [0], 1, out_dir=tmp_path, resume=True)


def test_failures_before_the_first_step_and_their_accounting(tmp_path):
    """A reset that raises gives an empty path and no motion metrics; summaries, statistics,
    the CSV and the plots take such rows (hand-made here) without a NaN."""

    class BrokenEnv:
        def call(self, name):
            raise RuntimeError("the simulator died")

    run = rollout_module.rollout(None, BrokenEnv(), 0, 5)
    assert run.failed and run.error["type"] == "RuntimeError" and run.error["message"] == "the simulator died"
    assert run.path.shape == (0, 3) and run.metrics.length == 0 and run.metrics.path_length is None

    def row(task, episode, condition, path_length, success=False, error=None, path=((0, 0, 1), (0, 0, 1.1))):
        none = error is not None and path_length is None
        return {"suite": SUITE, "task": task, "episode": episode, "condition": condition, "success": success,
                "length": 0 if none else 1, "path_length": path_length,
                "axis_displacement": {a: None if none else 0.0 for a in "xyz"},
                "net_displacement": {a: None if none else 0.0 for a in "xyz"},
                **{m: None if none else 0.1 for m in ("displacement_per_step", "z_displacement", "mean_speed", "max_speed",
                                                    "min_height")},
                "extra": {}, "path": [] if none else [list(p) for p in path], "actions": [], "error": error}

    crash = {"type": "RuntimeError", "message": "the simulator died", "where": ""}
    rows = [row(0, 0, "baseline", 0.1, success=True), row(0, 0, "steered", None, error=crash),
            row(0, 1, "baseline", 0.3), row(0, 1, "steered", 0.5, success=True),
            row(0, 2, "baseline", 0.2), row(0, 2, "steered", 0.4)]
    summary = condition_means(rows, ["baseline", "steered"], [0])
    assert summary["steered"]["success"] == pytest.approx(1 / 3)  # the crash is a failure
    assert summary["steered"]["path_length"] == pytest.approx(0.45)  # (0.5 + 0.4) / 2
    assert (summary["steered"]["failed"], summary["steered"]["task0_failed"]) == (1, 1)
    stats = paired_statistics(rows, ["baseline", "steered"])["steered"]
    assert stats["path_length"]["n"] == 2 and stats["path_length"]["mean_difference"] == pytest.approx(0.2)
    assert stats["success"]["n"] == 3 and stats["success"]["mean_difference"] == pytest.approx(0.0)
    all_failed = condition_means([row(0, 0, "baseline", None, error=crash)], ["baseline"], [0])["baseline"]
    assert all_failed["path_length"] is None and all_failed["success"] == 0.0
    assert "RuntimeError,the simulator died" in rows_csv(rows)
    plot_trajectories(rows, tmp_path / "t.png")
    plot_metrics(rows, tmp_path / "m.png")
    assert (tmp_path / "t.png").stat().st_size and (tmp_path / "m.png").stat().st_size


def test_cli_steer_and_out_errors_come_before_loading(tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("nnsight_vla.registry.load", no_loading)
    NeuronCluster([(1, 3)], name="up_1", d_mlp=256).to_yaml(tmp_path / "c.yaml")
    NeuronCluster([(0, 4)], name="down_1", d_mlp=256).to_yaml(tmp_path / "c.yaml")
    base = ["eval", "tiny-openvla", "--suite", SUITE, "--out", str(tmp_path / "run")]
    assert main(base + ["--steer", f"{tmp_path / 'missing.yaml'}:4"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(base + ["--steer", f"{tmp_path / 'c.yaml'}#left_1:4"]) == 2
    assert "has no cluster 'left_1'; it has ['up_1', 'down_1']" in capsys.readouterr().err
    assert main(base + ["--steer", f"{tmp_path / 'c.yaml'}:4"]) == 2
    assert "holds clusters ['up_1', 'down_1']" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(base[:-1] + [str(tmp_path / "a-file" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "a-file" / "run") in err
    assert not (tmp_path / "run").exists()  # nothing was created


@pytest.mark.slow
def test_cli_interrupted_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rollout_module, "make_env", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["eval", "tiny-openvla", "--suite", SUITE, "--max-steps", "3", "--out", str(tmp_path / "run")])
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: 0 finished episodes are saved" in err and "with --resume to continue" in err


def test_ray_results_reach_the_caller_as_they_arrive_and_a_dead_worker_says_resume():
    """`parallel._dispatch` with a stand-in for Ray (no processes): each episode goes to
    ``on_result`` in the caller as it arrives, a failed one included; a worker that dies
    stops the run with a VLAError that says how to resume."""
    from types import SimpleNamespace

    from nnsight_vla import VLAError
    from nnsight_vla.eval import parallel
    from nnsight_vla.eval.rollout import Episode, no_metrics

    class ActorDied(Exception):
        pass

    class FakeRay:
        exceptions = SimpleNamespace(RayActorError=ActorDied, RayTaskError=type("RayTaskError", (Exception,), {}))

        def __init__(self, dies=None):
            self.dies = dies

        def wait(self, refs, num_returns=1):
            return refs[:1], refs[1:]

        def get(self, ref):
            if ref == self.dies:
                raise ActorDied("the worker's process was killed")
            failed = {"type": "RuntimeError", "message": "boom", "where": ""} if ref[1] == 1 else None
            return ref, Episode(no_metrics(), np.zeros((0, 3)), np.zeros(0), error=failed), (0.0, 0.0, 1)

    class Actor:  # hashable, as Ray's actor handles are
        run = SimpleNamespace(remote=lambda job, *args: job)

    actor = Actor()
    jobs = parallel.job_order([0], 2, ["baseline"])
    seen = []
    done = parallel._dispatch(FakeRay(), [actor], jobs, {"baseline": None}, None,
                              lambda job, episode: seen.append((job, episode.failed)))
    assert seen == [((0, 0, "baseline"), False), ((0, 1, "baseline"), True)] and set(done) == set(jobs)
    seen.clear()
    with pytest.raises(VLAError, match="Ray worker stopped.*resume=True"):
        parallel._dispatch(FakeRay(dies=jobs[1]), [actor], jobs, {"baseline": None}, None,
                           lambda job, episode: seen.append(job))
    assert seen == [jobs[0]]  # what arrived before the worker died is kept


def test_cli_eval_where_every_episode_fails_exits_2_with_the_first_error(tmp_path, capsys, monkeypatch):
    """Files are written (the rows say what happened), but the command does not report success."""

    class BrokenEnv:
        def call(self, name):
            raise RuntimeError("the simulator died")

        def close(self):
            pass

    monkeypatch.setattr(rollout_module, "make_env", lambda *args, **kwargs: BrokenEnv())
    assert main(["eval", "tiny-openvla", "--suite", SUITE, "--max-steps", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert ("error: every episode of condition 'baseline' failed (1 of 1); the first: RuntimeError: the simulator "
            "died (at ") in err
    assert f"The rows are in {tmp_path / 'run' / 'episodes.jsonl'}" in err
    assert (tmp_path / "run" / "summary.json").is_file()


def test_resume_with_more_random_controls_keeps_the_rows_and_runs_only_the_new(tmp_path, tiny):
    """More random controls extend a run: control k is drawn from seed + k whatever their number."""
    from nnsight_vla.eval.evaluate import steering_conditions
    from nnsight_vla.eval.records import describe_steering, open_run

    steering = nnsight_vla.Clamp([(1, 3), (1, 17)], 8.0)
    few, _ = steering_conditions(tiny, {"up": steering}, ("baseline", "random"), 2, 7)
    more, groups = steering_conditions(tiny, {"up": steering}, ("baseline", "random"), 3, 7)
    assert groups["up"] == ["up/random0", "up/random1", "up/random2"]
    described = {k: describe_steering(v) for k, v in more.items() if k != "baseline"}
    assert all(describe_steering(few[k]) == described[k] for k in ("up/random0", "up/random1"))
    assert len({json.dumps(d) for d in described.values()}) == 4  # the controls differ from each other and from up

    def settings(conditions, **change):
        return {"suite": SUITE, "tasks": [0], "episodes": 1, "conditions": list(conditions), "seed": 7, **change}

    jobs = lambda conditions: [(0, 0, c) for c in conditions]  # noqa: E731
    assert open_run(tmp_path, settings(few), [], False, jobs(few)) == {}
    rows = [{"task": 0, "episode": 0, "condition": c, "success": k % 2} for k, c in enumerate(few)]
    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = open_run(tmp_path, settings(more), [], True, jobs(more))
    assert kept == {(0, 0, r["condition"]): r for r in rows}  # up/random2's episode is all that is left to run
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["conditions"] == list(more)
    with pytest.raises(InputError, match=r"conditions: recorded .*up/random2.*now"):  # a condition dropped
        open_run(tmp_path, settings(few), [], True, jobs(few))
    with pytest.raises(InputError, match=r"conditions: recorded .*seed: recorded 7, now 8"):  # added, and more
        open_run(tmp_path, settings([*more, "up/random3"], seed=8), [], True, jobs(more))
