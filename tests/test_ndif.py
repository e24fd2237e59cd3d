"""Remote execution on the real NDIF server software (ndif 0.1.2), started on loopback by `nnsight-vla serve run`."""

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.intervention.serialization import dumps
from nnsight.schema.request import RequestModel

import nnsight_vla
from nnsight_vla import InputError, Observation, StackError
from nnsight_vla.ndif import stack
from nnsight_vla.remote import WEIGHT_FILES, _placement

from conftest import random_image

#: The NDIF stack and the Ray check start many processes: `make test` runs them after the rest, at
#: the same time on two workers (scripts/test.sh), each in its own loopback-only namespace.
pytestmark = [pytest.mark.stacks, pytest.mark.xdist_group("ndif")]

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def no_namespace_reason():
    problem = stack.namespace_problem()
    if problem:
        return f"NDIF STACK NOT TESTED: cannot make a loopback-only network namespace: {problem}"
    if shutil.which("redis-server") is None:
        return "NDIF STACK NOT TESTED: redis-server is not installed (apt-get install redis-server)"
    return None


def hub_cache(folder: Path, cache: Path, weights: bool) -> None:
    """``folder`` as the Hub cache's org/tiny-openvla at COMMIT, with or without its weight files."""
    repo = cache / "models--org--tiny-openvla"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for path in folder.iterdir():
        if weights or not any(fnmatch.fnmatch(path.name, p) for p in WEIGHT_FILES):
            shutil.copy(path, repo / "snapshots" / COMMIT / path.name)


@pytest.fixture(scope="module")
def served(saved_tiny, tmp_path_factory):
    """One stack for the module: up, tiny-pi0 deployed, tests/ndif_check.py as the client, down."""
    if reason := no_namespace_reason():
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("ndif")
    hub_cache(saved_tiny, base / "server-cache", weights=True)
    hub_cache(saved_tiny, base / "client-cache", weights=False)
    run = Path(tempfile.mkdtemp(prefix="ndif-", dir="/tmp"))  # short: Ray's socket paths live under it
    (base / "out").mkdir()
    client = [sys.executable, ROOT / "tests" / "ndif_check.py", base / "out", base / "client-cache", saved_tiny]
    proc = subprocess.run(
        [sys.executable, "-m", "nnsight_vla.cli", "serve", "run", "--run", run, "--deploy", "tiny-pi0", "--", *client],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(base / "server-cache")},
    )
    assert proc.returncode == 0 and (base / "out" / "result.json").exists(), proc.stdout[-3000:] + proc.stderr[-5000:]
    yield json.loads((base / "out" / "result.json").read_text()), run
    shutil.rmtree(run, ignore_errors=True)


def passed(result: dict, name: str) -> dict:
    assert "error" not in result[name] or name == "error", result[name]
    return result[name]


@pytest.mark.slow
def test_remote_trace_equals_local_bit_for_bit(served):
    result, _ = served
    trace = passed(result, "trace")
    assert trace["equal"] and trace["dtype"] == "torch.float32"
    assert result["key"].startswith("nnsight_vla_openvla.model.OpenVLA:") and COMMIT in result["key"]


@pytest.mark.slow
def test_remote_steering_clamp_and_raw_edit(served):
    steering = passed(served[0], "steering")
    for how in ("clamp", "edit"):
        assert steering[how]["equal"] and steering[how]["acted"], how
    assert steering["clamp"]["equals_steer"]  # remote Clamp == local Clamp as a torch hook


@pytest.mark.slow
def test_remote_predict_action_iterates_decoding_and_denoising_steps(served):
    result, _ = served
    predict = passed(result, "predict")  # OpenVLA: 7 decoding forwards, clamped at each
    assert predict["equal"] and predict["steps"] == 7 and predict["equals_steer"]
    pi0 = passed(result, "pi0")  # Pi0: the VLM once, the expert at each of 10 denoising steps
    assert pi0["steps"] == 10 and pi0["equal"] and pi0["acted"] and pi0["plain_equal"]
    pi05 = passed(result, "pi05")  # Pi0.5, provisioned on demand by its first request
    assert pi05["steps"] == 10 and pi05["equal"]


@pytest.mark.slow
def test_remote_session_and_nonblocking_submit_and_poll(served):
    result, _ = served
    assert passed(result, "session")["equal"]
    nonblocking = passed(result, "nonblocking")
    assert nonblocking["equal"] and nonblocking["job_id"] and nonblocking["polls"] >= 1


@pytest.mark.slow
def test_client_that_is_not_dispatched_loads_no_weights(served):
    result, _ = served
    assert result["client_dispatched"] is False
    assert result["client_files"] and not any(
        fnmatch.fnmatch(name, p) for name in result["client_files"] for p in WEIGHT_FILES
    )  # the client's cache holds the configuration only; the server read the weights


@pytest.mark.slow
def test_server_error_comes_back_and_the_server_keeps_serving(served):
    error = served[0]["error"]
    assert error["error"].startswith("nnsight.intervention.backends.remote.RemoteError")
    assert "index 1000000 is out of bounds for dimension" in error["error"]  # the server's own message
    assert error["next_equal"]


@pytest.mark.slow
def test_large_result_travels_through_the_object_store(served):
    large = passed(served[0], "large")
    assert large["bytes"] > 8 * 2**20 and large["equal"] and large["s3_objects_added"] >= 1


@pytest.mark.slow
def test_ten_concurrent_clients_all_correct(served):
    concurrent = passed(served[0], "concurrent")
    assert concurrent == {**concurrent, "returned": 10, "correct": 10, "errors": []}


@pytest.mark.slow
def test_stack_stops_every_process_it_started(served):
    _, run = served
    assert not stack._marked(run)  # no process carries the run's marker
    assert not list((run / "pids").glob("*.pid"))
    assert {p.name for p in (run / "logs").iterdir()} >= {"redis.log", "s3.log", "ray.log", "controller.log", "api.log"}
    assert not (Path.home() / ".gunicorn" / "gunicorn.ctl").exists() or (run / "home" / ".gunicorn").exists()


# -- without a stack --------------------------------------------------------------------------------


def test_services_run_without_grpc_fork_support_unless_the_operator_says(tmp_path, monkeypatch):
    """As NDIF's start.sh: Ray's client proxy forks a server per client, which dies with gRPC's fork support on."""
    monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT", raising=False)
    assert stack.environment(tmp_path)["GRPC_ENABLE_FORK_SUPPORT"] == "0"
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "1")
    assert stack.environment(tmp_path)["GRPC_ENABLE_FORK_SUPPORT"] == "1"


def test_port_taken_and_no_namespace_are_clear_errors(tmp_path):
    if not stack.in_loopback_namespace():
        with pytest.raises(StackError, match="loopback-only namespace"):
            stack.up(Path("/tmp/ndif-x"))
    with pytest.raises(StackError, match="longer than"):
        stack.up(tmp_path / ("x" * 50))
    if reason := no_namespace_reason():
        pytest.skip(reason)
    code = ("import socket, sys; from pathlib import Path; from nnsight_vla.ndif import stack\n"
            "s = socket.socket(); s.bind(('127.0.0.1', stack.PORTS['api'])); s.listen()\n"
            "try: stack.up(Path(sys.argv[1]))\nexcept stack.StackError as e: print('REFUSED', e)\n")
    run = tempfile.mkdtemp(prefix="ndif-", dir="/tmp")
    out = subprocess.run(stack.loopback_command([sys.executable, "-c", code, run]), capture_output=True, text=True, timeout=120)
    shutil.rmtree(run, ignore_errors=True)
    assert "REFUSED already in use on 127.0.0.1: api port 8011" in out.stdout, out.stderr[-2000:]


def test_cli_serve_errors_name_the_fix(capsys, monkeypatch, tmp_path):
    from nnsight_vla.cli import main

    assert main(["serve", "up", "--run", "/tmp/" + "y" * 50]) == 2
    assert "shorter" in capsys.readouterr().err
    assert main(["serve", "deploy", "--run", "/tmp/ndif-x"]) == 2
    assert "deploy needs a model" in capsys.readouterr().err
    nowhere = tmp_path / "none"
    assert main(["serve", "deploy", "tiny-openvla", "--run", str(nowhere)]) == 2  # no stack there: no traceback
    assert f"no stack was started with its files in {nowhere}; start one with `nnsight-vla serve up" in capsys.readouterr().err
    assert not nowhere.exists()
    if not stack.in_loopback_namespace():  # no unshare: refused before anything starts
        monkeypatch.setattr(shutil, "which", lambda name: None)
        assert main(["serve", "run", "--", "true"]) == 2
        assert "cannot make a loopback-only network namespace: `unshare` is not installed" in capsys.readouterr().err


def test_deploy_refuses_a_process_already_connected_to_ray(tmp_path, monkeypatch):
    """NDIF's deploy runs in the calling process and would use its Ray session, whatever cluster that is."""
    import ray

    (tmp_path / "env.json").write_text("{}")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    key = nnsight_vla.load("tiny-openvla", dispatch=False).to_model_key()
    with pytest.raises(StackError, match=r"already connected to a Ray cluster.*serve deploy"):
        stack.deploy(tmp_path, key)
    assert not (tmp_path / "logs").exists()  # refused before anything was written


def test_from_model_key_takes_what_ndif_passes():
    assert _placement({"device": 0}) == "cuda:0"
    assert _placement({"device_map": "balanced", "max_memory": {0: 5, 1: 9, "cpu": 99}}) == "cuda:1"
    assert _placement({"device_map": {"": "cpu"}}) == "cpu"
    assert _placement({"device_map": "auto"}) is None
    with pytest.raises(InputError, match="splits the model"):
        _placement({"device_map": {"a": 0, "b": 1}})
    key = nnsight_vla.load("tiny-openvla", dispatch=False).to_model_key()
    cls, suffix = type(nnsight_vla.load("tiny-openvla", dispatch=False)), key.split(":", 1)[1]
    model = cls._remoteable_from_model_key(suffix, dispatch=True, dtype="bfloat16", device="cpu", trust_remote_code=False)
    assert model.dispatched and next(model._module.parameters()).dtype == torch.bfloat16
    with pytest.raises(InputError, match="quantized"):
        cls._remoteable_from_model_key(suffix, dtype="nf4")
    with pytest.raises(InputError, match="unknown arguments"):
        cls._remoteable_from_model_key(suffix, low_cpu_mem_usage=True)
    with pytest.raises(InputError, match="to_model_key"):
        cls._remoteable_from_model_key("tiny-openvla")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            cls._remoteable_from_model_key(suffix, dispatch=True, device=0)


@pytest.mark.parametrize("name", ["tiny-openvla", "tiny-pi0"])
def test_meta_build_reads_no_weights_and_matches_the_loaded_tree(name, tmp_path):
    nnsight_vla.load(name).save_pretrained(tmp_path / "full")
    (tmp_path / "config-only").mkdir()
    for path in (tmp_path / "full").iterdir():
        if not any(fnmatch.fnmatch(path.name, p) for p in WEIGHT_FILES):
            shutil.copy(path, tmp_path / "config-only" / path.name)
    loaded = nnsight_vla.load(tmp_path / "full")
    cls, suffix = type(loaded), loaded.to_model_key().split(":", 1)[1]
    # what NDIF's sandbox and sizing build, from a folder that has no weight file at all
    meta = cls._remoteable_from_model_key(suffix.replace(str(tmp_path / "full"), str(tmp_path / "config-only")))
    assert not meta.dispatched
    assert [(n, type(m).__name__) for n, m in meta._module.named_modules()] == \
        [(n, type(m).__name__) for n, m in loaded._module.named_modules()]
    assert [(n, p.shape, p.dtype) for n, p in meta._module.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in loaded._module.named_parameters()]
    info = cls._remoteable_describe_checkpoint(suffix, "float32", trust_remote_code=False)
    n = sum(p.numel() for p in loaded._module.parameters()) + sum(b.numel() for b in loaded._module.buffers())
    assert info.size_bytes == 4 * n
    assert cls._remoteable_max_tp_size(suffix, trust_remote_code=False) is None


class _Capture(RemoteBackend):
    """Serializes the request as RemoteBackend would, and sends nothing."""

    def __call__(self, tracer=None):
        self.blob = RequestModel.serialize(tracer, False)


@pytest.mark.parametrize("name", ["tiny-openvla", "tiny-pi0"])
def test_heavy_state_travels_by_reference_not_in_every_request(name):
    model = nnsight_vla.load(name, dispatch=False)
    images = {c: random_image(0, 8) for c in model.spec.camera_names}
    obs = Observation(images if len(images) > 1 else images[model.spec.camera_names[0]], "go",
                      state=None if model.spec.state_dim is None else np.zeros(model.spec.state_dim))
    backend = _Capture(model.to_model_key(), host="http://127.0.0.1:1")
    with model.trace(obs, backend=backend):
        model.layers[1].mlp.down_proj.input.save()
    objects = model._remoteable_persistent_objects()
    for attr in model._persistent_attributes:  # tokenizer, processors, configs with norm statistics
        assert f"VLA:{attr}" in objects
        assert len(dumps(getattr(model, attr))) < 64, attr  # a reference, not the object
    assert b"norm_stats" not in backend.blob and len(backend.blob) < 80_000
