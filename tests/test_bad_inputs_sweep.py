"""A sweep of bad inputs across the public entry points: each is refused with a project error
(`VLAError`, or exit status 2 from the command line) whose message names the problem, within
a time limit, and leaves no file behind."""

from __future__ import annotations

import contextlib
import functools
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import Add, Clamp, NeuronCluster, Observation, Scale, Site, VLAError, collect
from nnsight_vla.cli import main
from nnsight_vla import lens, probes, steering
from nnsight_vla import transformer_lens as tl
from nnsight_vla.eval import evaluate, paired_comparison

from conftest import random_image

pytestmark = pytest.mark.xdist_group("hardening")  # shares the tiny model with test_hardening

LIMIT_S = 60  # per call: every refusal comes before the work, so far below this
CLUSTER = [(1, 3), (1, 17)]
IMAGE = random_image(0)


def cli(*argv: str):
    return lambda c: main([*argv])

# (case, call(context), what the message says). The context `c` holds a tiny-openvla, an
# observation, `c.out` (a path in the watched folder: nothing may appear there), a collected
# activation folder, probe results and a lens table.
CASES = [
    # loading
    ("load: unknown name", lambda c: nnsight_vla.load("tiny-openvlaa"), "is not a built-in name or a folder"),
    ("load: empty name", lambda c: nnsight_vla.load(""), "give a built-in name"),
    ("load: bad dtype", lambda c: nnsight_vla.load("tiny-openvla", dtype="float8"), "dtype 'float8' is not supported"),
    ("load: bad device", lambda c: nnsight_vla.load("tiny-openvla", device="gpu0"), "device='gpu0' is not a device name"),
    ("load: unknown option", lambda c: nnsight_vla.load("tiny-openvla", temperature=1.0), "no option temperature="),
    ("load: a folder without a checkpoint", lambda c: nnsight_vla.load(c.empty), "has no config.json"),
    # observations and sites
    ("Observation: instruction not a str", lambda c: Observation(IMAGE, 3), "instruction must be a non-empty string, got 3"),
    ("Observation: empty instruction", lambda c: Observation(IMAGE, ""), "instruction must be a non-empty string"),
    ("Observation: a 1-D image", lambda c: Observation(np.zeros(12, np.uint8), "go"), r"must be \(H, W, 3\) RGB"),
    ("Observation: NaN image", lambda c: Observation(torch.full((3, 8, 8), float("nan")), "go"), "NaN"),
    ("Observation: NaN state", lambda c: Observation(IMAGE, "go", state=[float("nan")]), "NaN"),
    ("Observation: no image", lambda c: Observation({}, "go"), "images is an empty dict"),
    ("Site: unknown kind", lambda c: Site(1, "resids"), "is not one of"),
    ("Site: layer not an int", lambda c: Site("a", "resid"), "a site's layer must be an int"),
    ("Site: text without a layer", lambda c: Site.parse("vlm.resid"), "TOWER.LAYER.KIND"),
    ("Site: layer out of range", lambda c: collect(c.tiny, c.obs, Site(40)), "layer 40 is out of range"),
    ("Site: unknown tower", lambda c: collect(c.tiny, c.obs, Site(1, "resid", "expert")), "has no tower 'expert'"),
    # prediction and tracing
    ("predict: not an observation", lambda c: c.tiny.predict_action("pick up the bowl"), "expected an nnsight_vla.Observation"),
    ("predict: unknown option", lambda c: c.tiny.predict_action(c.obs, temperature=0.5), "temperature"),
    ("predict: unknown unnorm_key", lambda c: c.tiny.predict_action(c.obs, unnorm_key="nope"), "nope"),
    ("predict: a phrase on a model that says none", lambda c: c.tiny.predict_action(c.obs, phrase="up fast"),
     "drop phrase="),
    ("say_and_act: a model that says nothing", lambda c: c.tiny.say_and_act(c.obs), "says nothing before its actions"),
    ("predict: nested in a trace", lambda c: _nested(c), "inside a running trace"),
    ("layers: a str index", lambda c: c.tiny.layers["a"], "a layer must be an int"),
    ("layers: out of range", lambda c: c.tiny.layers[99], "layer 99 is out of range"),
    ("spec facts on the model", lambda c: c.tiny.camera_names, "model.spec.camera_names"),
    ("X-VLA: images past its position embeddings", lambda c: _xvla().predict_action(_xvla_obs(84, 84)),
     "84x84 images: its Florence-2 position embeddings reach 80x80"),
    ("X-VLA: cameras of two sizes", lambda c: _xvla().predict_action(_xvla_obs(64, 80)),
     "must share one size; got image 64x64, image2 80x80"),
    # collect
    ("collect: no observations", lambda c: collect(c.tiny, [], Site(1)), "observations is empty"),
    ("collect: no sites", lambda c: collect(c.tiny, c.obs, []), "sites is empty"),
    ("collect: a number for a site", lambda c: collect(c.tiny, c.obs, [1]), "Site or its text"),
    ("collect: calls out of range", lambda c: collect(c.tiny, c.obs, Site(1), calls=[99]), "never ran"),
    ("collect: unknown calls", lambda c: collect(c.tiny, c.obs, Site(1), calls="some"), "calls='some'"),
    ("collect: unknown positions", lambda c: collect(c.tiny, c.obs, Site(1), positions="first"), "positions='first'"),
    ("collect: batch_size 0", lambda c: collect(c.tiny, c.obs, Site(1), batch_size=0), "batch_size=0"),
    ("collect: all positions over calls", lambda c: collect(c.tiny, c.obs, Site(1), positions="all"),
     "different lengths"),
    # interventions and steering
    ("Clamp: NaN value", lambda c: Clamp(CLUSTER, float("nan")), "finite"),
    ("Clamp: a str value", lambda c: Clamp(CLUSTER, "4"), "number"),
    ("Clamp: empty cluster", lambda c: Clamp([], 4.0), "the cluster is empty"),
    ("Clamp: calls not ints", lambda c: Clamp(CLUSTER, 1.0, calls=[0.5]), "calls"),
    ("Scale: infinite factor", lambda c: Scale(CLUSTER, float("inf")), "finite"),
    ("Add: NaN direction", lambda c: Add(torch.tensor([1.0, float("nan")]), layer=0), "NaN"),
    ("Add: direction of the wrong width", lambda c: _steer(c, Add(torch.ones(5), layer=1)), "direction has width 5"),
    ("steer: a str", lambda c: _steer(c, "clamp"), "not an intervention"),
    ("steer: empty list", lambda c: _steer(c, []), "no interventions"),
    ("steer: call that never runs", lambda c: _steer(c, Clamp(CLUSTER, 4.0, calls=[99])), "calls=\\[99\\]"),
    ("steer: neuron out of range", lambda c: _steer(c, Clamp([(1, 10_000)], 4.0)), r"neurons \[10000\] of layer 1 are out of range"),
    ("NeuronCluster: negative neuron", lambda c: NeuronCluster([(1, -3)]), "pair of non-negative ints"),
    ("open_loop: controls=0", lambda c: steering.open_loop(c.tiny, c.obs, {"c": Clamp(CLUSTER, 4.0)}, controls=0),
     "at least 2"),
    ("open_loop: a list of steerings", lambda c: steering.open_loop(c.tiny, c.obs, [Clamp(CLUSTER, 4.0)]),
     "must be a dict"),
    ("open_loop: no observations", lambda c: steering.open_loop(c.tiny, [], {"c": Clamp(CLUSTER, 4.0)}),
     "observations is empty"),
    ("mean_difference: empty side", lambda c: steering.mean_difference(c.tiny, [], [c.obs], layer=1), "positive is empty"),
    ("load_direction: missing file", lambda c: steering.load_direction(c.out / "nowhere.pt"), "is not a direction written by save_direction"),
    ("save_direction: unwritable", lambda c: steering.save_direction("/proc/dir.pt", torch.ones(3)), "/proc"),
    # lens
    ("lens: top_k 0", lambda c: lens.project_value_vectors(c.tiny, top_k=0, progress=False), "top_k=0"),
    ("lens: layer out of range", lambda c: lens.project_value_vectors(c.tiny, layers=[50], progress=False), "layer 50 is out of range"),
    ("lens: unknown tower", lambda c: lens.project_value_vectors(c.tiny, tower="expert", progress=False), "expert"),
    ("lens: unknown dtype", lambda c: lens.project_value_vectors(c.tiny, dtype="int8", progress=False), "int8"),
    ("lens: cluster of an unknown concept", lambda c: lens.cluster(c.table, "zzqx"), "no token of this vocabulary matches 'zzqx'"),
    ("lens: cluster size 0", lambda c: lens.cluster(c.table, "up", size=0), "size=0 must be an int"),
    ("lens: plot to /proc", lambda c: lens.plot_rewired(c.table, "/proc/rewired.png"), "/proc"),
    ("logit lens: position out of range", lambda c: lens.logit_lens(c.tiny, c.obs, positions=[9999]), r"positions \[9999\] are out of range"),
    # probes
    ("collect_to_disk: calls never run", lambda c: probes.collect_to_disk(
        c.tiny, [c.obs], [Site(1)], c.out / "acts", calls=[10], progress=False), "never ran"),
    ("collect_to_disk: unknown target", lambda c: probes.collect_to_disk(
        c.tiny, [c.obs], [Site(1)], c.out / "acts", targets=["speed"], progress=False), r"unknown model targets \['speed'\]"),
    ("collect_to_disk: bad dtype", lambda c: probes.collect_to_disk(
        c.tiny, [c.obs], [Site(1)], c.out / "acts", dtype="int8", progress=False), "int8"),
    ("collect_to_disk: shard_rows 0", lambda c: probes.collect_to_disk(
        c.tiny, [c.obs], [Site(1)], c.out / "acts", shard_rows=0, progress=False), "shard_rows"),
    ("collect_to_disk: into /proc", lambda c: probes.collect_to_disk(
        c.tiny, [c.obs], [Site(1)], "/proc/acts", progress=False), "/proc"),
    ("DatasetFrames: not a dataset", lambda c: probes.DatasetFrames(c.empty), "not a LeRobotDataset"),
    ("probe_folder: not a folder of activations", lambda c: probes.probe_folder(c.empty), "holds no manifest.json"),
    ("probe_folder: unknown target", lambda c: probes.probe_folder(c.store, targets=["speed"]), "holds no target 'speed'"),
    ("probe_folder: targets as one str", lambda c: probes.probe_folder(c.store, targets="actoin"), "holds no target 'actoin'"),
    ("fit_probes: no features", lambda c: probes.fit_probes({}, {"y": np.zeros(8)}, np.arange(8)), "features is empty"),
    ("fit_probes: folds 1", lambda c: probes.fit_probes(*c.fit, folds=1, progress=False), "folds=1 must be"),
    ("probe_steering: unknown target", lambda c: probes.probe_steering(c.results, Site(1), "nope", 1.0), "no probe of target 'nope'"),
    ("probe_steering: a neurons site", lambda c: probes.probe_steering(c.results, "vlm.1.neurons", "y", 1.0),
     "residual stream"),
    ("probe_steering: a number for a site", lambda c: probes.probe_steering(c.results, 1, "y", 1.0),
     "Site or its text"),
    # TransformerLens and SAE-Lens
    ("to_bridge: unknown part", lambda c: tl.to_bridge(c.tiny, part="expert"), "no TransformerLens part 'expert'"),
    ("hooks: a pair, not a list", lambda c: _enter(tl.hooks(c.tiny, ("blocks.1.mlp.hook_post", lambda x, hook: x))),
     "pass a list of them"),
    ("hooks: unknown hook point", lambda c: _enter(tl.hooks(c.tiny, [("blocks.1.nope", lambda x, hook: x)])),
     "hook 'blocks.1.nope' is not one of"),
    ("Site.parse: unknown hook point", lambda c: Site.parse("blocks.1.hook_nope"), "hook 'blocks.1.hook_nope' is not one of"),
    ("train_sae: d_sae 0", lambda c: tl.train_sae(c.tiny, [c.obs], Site(1), c.out / "sae", d_sae=0), "d_sae=0 must be a positive int"),
    ("train_sae: into /proc", lambda c: tl.train_sae(c.tiny, [c.obs], Site(1), "/proc/sae", d_sae=8), "/proc"),
    ("load_sae: missing folder", lambda c: tl.load_sae(c.out / "no-sae"), "no-sae does not exist"),
    # evaluation
    ("evaluate: unknown suite", lambda c: evaluate(c.tiny, "libero_11", [0], 1), "unknown LIBERO suite 'libero_11'"),
    ("evaluate: episodes 0", lambda c: evaluate(c.tiny, "libero_10", [0], 0), "episodes must be at least 1"),
    ("evaluate: task out of range", lambda c: evaluate(c.tiny, "libero_10", [10], 1), "has tasks 0..9, got 10"),
    ("evaluate: camera_size 0", lambda c: evaluate(c.tiny, "libero_10", [0], 1, camera_size=0), "camera_size must be at least 1"),
    ("evaluate: seed a str", lambda c: evaluate(c.tiny, "libero_10", [0], 1, seed="x"), "seed must be an int"),
    ("evaluate: unknown control", lambda c: evaluate(c.tiny, "libero_10", [0], 1, controls=["randm"]), r"unknown controls \['randm'\]"),
    ("paired_comparison: lengths differ", lambda c: paired_comparison([1.0, 0.0], [1.0]), "two 1-D arrays of one length"),
    # the command line
    ("cli lens: unknown model", cli("lens", "tiny-openvlaa", "--out", "lens"), "is not a built-in name or a folder"),
    ("cli lens: --top-k 0", cli("lens", "tiny-openvla", "--top-k", "0", "--out", "lens"), "--top-k 0"),
    ("cli lens: --out in /proc", cli("lens", "tiny-openvla", "--out", "/proc/lens"), "/proc"),
    ("cli clusters: no table", cli("clusters", "nowhere", "--concept", "up", "--out", "c.yaml"), "nowhere does not exist"),
    ("cli eval: --camera-size 0", cli("eval", "tiny-openvla", "--camera-size", "0", "--out", "e"), "camera_size must be at least 1"),
    ("cli eval: --episodes 0", cli("eval", "tiny-openvla", "--episodes", "0", "--out", "e"), "episodes must be at least 1"),
    ("cli collect: no source", cli("collect", "tiny-openvla", "--sites", "resid:1", "--out", "a"), "give one source: --data"),
    ("cli collect: bad site", cli("collect", "tiny-openvla", "--data", "d", "--sites", "resid:x", "--out", "a"),
     "sites 'resid:x': LAYERS is"),
    ("cli probe: not a folder of activations", cli("probe", "nowhere", "--out", "p"), "nowhere holds no manifest.json"),
    ("cli serve deploy without a stack", cli("serve", "deploy", "tiny-openvla"), "serve up"),
]


@functools.lru_cache(maxsize=1)
def _xvla():
    return nnsight_vla.load("tiny-xvla")


def _xvla_obs(first: int, second: int) -> Observation:
    """tiny-xvla's two cameras at the given sides (80 pixels is the most its positions reach)."""
    images = {"image": np.zeros((first, first, 3), np.uint8), "image2": np.zeros((second, second, 3), np.uint8)}
    return Observation(images, "pick up the bowl", state=np.zeros(8, np.float32))


def _steer(c, interventions):
    with c.tiny.steer(interventions):
        c.tiny.predict_action(c.obs)


def _enter(manager):
    with manager:
        pass


def _nested(c):
    with c.tiny.trace(c.obs):
        c.tiny.predict_action(c.obs)


@contextlib.contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"no answer in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def context(tiny, obs, tmp_path_factory):
    base = tmp_path_factory.mktemp("sweep")
    (base / "empty").mkdir()
    store = probes.collect_to_disk(tiny, [obs] * 4, [Site(1)], base / "store", progress=False)
    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(6), 4)
    features = {(Site(1), 0): rng.normal(size=(24, 16)).astype(np.float32)}
    fit = (features, {"y": rng.normal(size=24)}, episodes)
    results = probes.fit_probes(*fit, folds=3, inner_folds=2, shuffles=1, progress=False)
    table = lens.project_value_vectors(tiny, top_k=5, progress=False)
    watched = base / "watched"
    watched.mkdir()
    return SimpleNamespace(tiny=tiny, obs=obs, empty=base / "empty", store=store.folder, fit=fit,
                           results=results, table=table, out=watched / "out", watched=watched)


def test_the_sweep_has_sixty_cases_or_more():
    assert len(CASES) >= 60 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, call, message", CASES, ids=[name for name, _, _ in CASES])
def test_a_bad_input_is_refused_clearly_quickly_and_leaves_no_file(context, name, call, message, monkeypatch, capsys):
    monkeypatch.chdir(context.watched)  # relative outputs of the command line land here too
    before = files_under(context.watched)
    with time_limit(LIMIT_S):
        if name.startswith("cli"):
            try:
                status = call(context)
            except SystemExit as stop:  # argparse's own refusals
                status = stop.code
            said = capsys.readouterr().err
            assert status == 2, f"exit status {status}; stderr: {said}"
            assert message in said, said
        else:
            with pytest.raises(VLAError) as caught:
                call(context)

            assert re.search(message, str(caught.value)), str(caught.value)
    assert files_under(context.watched) == before, "a refused call left files behind"
