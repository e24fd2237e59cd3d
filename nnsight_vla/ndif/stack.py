"""A local NDIF stack (redis, moto's S3 server, Ray head, NDIF's controller and API) on loopback only.

Ray listens on every interface even when told 127.0.0.1, so the stack and its clients run inside a
private network namespace that has only ``lo``. ``nnsight-vla serve run`` makes one (needs root or
CAP_SYS_ADMIN), starts the stack, deploys models, runs a command with ``NDIF_HOST`` set, and stops
everything::

    nnsight-vla serve run --deploy tiny-openvla -- python my_experiment.py

Inside a namespace (``scripts/loopback.sh bash``), the steps one by one::

    nnsight-vla serve up --run RUN
    nnsight-vla serve deploy --run RUN /path/to/checkpoint     # or a built-in name, a Hub id, a model key
    nnsight-vla serve down --run RUN

Every process is started in its own process group with a PID file in ``RUN/pids``; logs go to
``RUN/logs``, and Ray's, gunicorn's and Python's temporary files to ``RUN``. ``down`` stops them by
id (and any straggler that carries the run's marker) and checks that the ports are free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from ..errors import StackError

#: Ports the stack listens on (all on 127.0.0.1, inside the namespace).
PORTS = {"redis": 6390, "s3": 9010, "ray_gcs": 6395, "ray_client": 10001, "ray_dashboard": 8275, "api": 8011}
HOST = f"http://127.0.0.1:{PORTS['api']}"
#: Environment variable carried by every process of a stack: how ``down`` finds stragglers.
MARKER = "NNSIGHT_VLA_NDIF_RUN"
BIN = Path(sys.executable).parent
#: Ray puts Unix sockets under the run folder; their paths must stay under 107 bytes.
MAX_RUN_PATH = 40


def in_loopback_namespace() -> bool:
    """Whether this process's network namespace has no interface but ``lo``."""
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


def namespace_problem() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None when it can."""
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode:
        return f"`unshare --net` failed ({probe.stderr.strip()}): it needs root or CAP_SYS_ADMIN"
    return None


def loopback_command(argv: list[str]) -> list[str]:
    """``argv`` run in a new network namespace whose only interface, ``lo``, is up."""
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def check_loopback_only() -> None:
    """Raise `StackError` unless this namespace has only ``lo``; then bring ``lo`` up."""
    if not in_loopback_namespace():
        names = sorted(name for _, name in socket.if_nameindex())
        raise StackError(
            f"this network namespace has interfaces {names}; Ray would listen on all of them. Use "
            "`nnsight-vla serve run -- COMMAND` (it makes a loopback-only namespace), or run inside "
            "scripts/loopback.sh."
        )
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def taken_ports() -> list[str]:
    """The stack's ports already in use on 127.0.0.1, as ``"NAME port PORT"``."""
    return [f"{name} port {port}" for name, port in PORTS.items() if not port_free(port)]


def _wait_port(port: int, name: str, timeout: float, run: Path) -> None:
    deadline, pid_file = time.time() + timeout, run / "pids" / f"{name}.pid"
    while time.time() < deadline:
        if pid_file.exists() and not Path(f"/proc/{pid_file.read_text()}").exists():
            raise StackError(f"{name} exited before listening on 127.0.0.1:{port}; see {run / 'logs' / name}.log")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise StackError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {run / 'logs' / name}.log")


def environment(run: Path, extra: dict | None = None) -> dict:
    """The environment every service of this stack (and every ``ndif`` CLI call) runs with."""
    env = {**os.environ, **(extra or {})}
    env.update({
        MARKER: str(run),
        "NDIF_REDIS_URL": f"redis://127.0.0.1:{PORTS['redis']}",
        "NDIF_OBJECT_STORE_URL": f"http://127.0.0.1:{PORTS['s3']}",
        "NDIF_OBJECT_STORE_ACCESS_KEY": "testing", "NDIF_OBJECT_STORE_SECRET_KEY": "testing",
        "NDIF_RAY_ADDRESS": f"ray://127.0.0.1:{PORTS['ray_client']}",
        "NDIF_API_URL": HOST, "NDIF_HOME": str(run), "NDIF_RAY_TEMP_DIR": str(run / "ray"),
        "NDIF_DEFAULT_DTYPE": "float32", "NDIF_MINIMUM_DEPLOYMENT_TIME_SECONDS": "0",
        # ndif's stock actor is CUDA-only, and ndif 0.1.2 passes nnsight 0.8.1 a keyword it dropped
        "NDIF_MODEL_IMPORT_PATH": "nnsight_vla.ndif.actor.CPUModelActor",
        "NDIF_CONTROLLER_IMPORT_PATH": "nnsight_vla.ndif.controller.ControllerActor",
        "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"), "RAY_USAGE_STATS_ENABLED": "0",
        "TMPDIR": str(run / "tmp"), "HOME": str(run / "home"),  # gunicorn writes ~/.gunicorn
        "PYTHONUNBUFFERED": "1",
        # As NDIF's own services/ray/start.sh: with gRPC's fork support on, the Ray client proxy's
        # server for a new ray:// client often dies at birth, and that client waits 40 s to retry.
        "GRPC_ENABLE_FORK_SUPPORT": env.get("GRPC_ENABLE_FORK_SUPPORT", "0"),
    })
    env.pop("RAY_ADDRESS", None)
    return env


def _start(run: Path, name: str, argv: list[str], env: dict) -> None:
    """Start one service in its own process group; PID file and log in the run folder."""
    with open(run / "logs" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run, start_new_session=True)
    (run / "pids" / f"{name}.pid").write_text(str(proc.pid))


#: ``python -c`` of the controller's launcher: NDIF's ``controller`` module run as ``__main__``
#: once Ray's ports (argv[1], JSON) listen, the bulk of its imports (9 s here) done before
#: (argv[2]: seconds to wait).
_LAUNCH_CONTROLLER = """
import json, runpy, socket, sys, time
import ray, ndif.common.schema.controller, ndif.services.ray.deployments.controller.cluster
deadline = time.time() + float(sys.argv[2])
for port in json.loads(sys.argv[1]):
    while socket.socket().connect_ex(("127.0.0.1", port)) and time.time() < deadline:
        time.sleep(0.2)
runpy.run_module("ndif.services.ray.deployments.controller.controller", run_name="__main__")
"""


def _ray(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()", *args]


def up(run: Path, env: dict | None = None, timeout: float = 180) -> float:
    """Start the stack with its files in ``run``; return the seconds it took.

    The time runs until the API reports Ray connected. ``env``: extra variables for the
    services (e.g. the server's ``HF_HUB_CACHE``).
    """
    t0 = time.time()
    run = Path(run).resolve()
    if len(str(run)) > MAX_RUN_PATH:
        raise StackError(f"run folder {run} is longer than {MAX_RUN_PATH} characters; Ray's socket paths under "
                         "it would be too long. Use a shorter one (e.g. /tmp/ndif-run).")
    if shutil.which("redis-server") is None:
        raise StackError("redis-server is not installed; `apt-get install redis-server` (scripts/env.sh does it as root).")
    check_loopback_only()
    if taken := taken_ports():
        raise StackError(f"already in use on 127.0.0.1: {', '.join(taken)}; stop what holds them (`serve down --run ...`).")
    for sub in ("pids", "logs", "ray", "tmp", "home"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    env = environment(run, env)
    (run / "env.json").write_text(json.dumps({k: v for k, v in env.items() if k.startswith("NDIF_")}, indent=1))
    _start(run, "redis", ["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(run / "tmp")], env)
    _start(run, "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(PORTS["s3"])], env)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # NDIF places replicas on nodes with a "GPU"; the CPU actor runs on this fake one.
    resources = {"head": 10, "cuda_memory_bytes": 4_000_000_000, "cpu_memory_bytes": memory}
    _start(run, "ray", _ray(
        "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=4", "--num-gpus=1",
        f"--resources={json.dumps(resources)}", f"--port={PORTS['ray_gcs']}",
        f"--ray-client-server-port={PORTS['ray_client']}", "--include-dashboard=true",  # the controller lists nodes through it
        "--dashboard-host=127.0.0.1", f"--dashboard-port={PORTS['ray_dashboard']}",
        f"--temp-dir={run / 'ray'}", "--disable-usage-stats"), env)
    # NDIF's API and its controller's one-shot launcher start now too, so that their imports run
    # while Ray starts: the API retries Redis and Ray every second; the launcher imports the
    # controller, waits for Ray's ports (the controller lists nodes through the dashboard), then runs.
    _start(run, "api", [str(BIN / "gunicorn"), "--config", "python:ndif.services.api.gunicorn_conf",
                        "ndif.services.api.app:app", "--bind", f"127.0.0.1:{PORTS['api']}"], env)
    ray_ports = [PORTS["ray_gcs"], PORTS["ray_client"], PORTS["ray_dashboard"]]
    with open(run / "logs" / "controller.log", "ab") as log:
        controller = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH_CONTROLLER, json.dumps(ray_ports), str(timeout)],
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{PORTS['ray_gcs']}"}, cwd=run, stdout=log,
            stderr=subprocess.STDOUT)
    try:
        for port, name in ((PORTS["redis"], "redis"), (PORTS["s3"], "s3"), (PORTS["ray_gcs"], "ray"),
                           (PORTS["ray_client"], "ray"), (PORTS["ray_dashboard"], "ray"), (PORTS["api"], "api")):
            _wait_port(port, name, timeout, run)
        returncode = controller.wait(max(1.0, timeout - (time.time() - t0)))
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    if returncode:
        raise StackError(f"NDIF's controller failed to start; see {run / 'logs' / 'controller.log'}")
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{HOST}/connected", timeout=5) as response:
                if response.status == 200 and json.loads(response.read() or b"false"):
                    return time.time() - t0
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise StackError(f"the API did not report Ray connected within {timeout:.0f} s; see {run / 'logs'}")


def model_key(target: str) -> str:
    """A full model key (``module.Class:{...}``) for a built-in name, checkpoint folder or Hub id.

    A key is returned as it is. The model is built on the meta device: no weight is read.
    """
    if ":{" in target:
        return target
    import nnsight_vla

    return nnsight_vla.load(target, dispatch=False).to_model_key()


def deploy(run: Path, target: str, size_bytes: int | None = None, dtype: str = "float32") -> str:
    """Deploy one model, pinned, with NDIF's own deploy (what ``ndif deploy`` runs); return its key.

    It runs in this process, as a Ray client of the stack, disconnected again before it
    returns (a separate ``ndif deploy`` would spend some 20 s starting). Without
    ``size_bytes`` NDIF sizes the model by building it on the meta device (the class's
    ``describe_checkpoint``). Progress goes to ``logs/deploy.log`` in the run folder.
    """
    run = Path(run).resolve()
    if not (run / "env.json").is_file():
        raise StackError(f"no stack was started with its files in {run}; start one with `nnsight-vla serve up --run "
                         f"{run}` (inside scripts/loopback.sh), or use `nnsight-vla serve run --deploy MODEL -- COMMAND`.")
    key = model_key(target)
    entry = {"checkpoint": key, "model_key": key, "dtype": dtype, "pinned": True}
    if size_bytes:
        entry["size_bytes"] = size_bytes
    with _as_a_service(run), open(run / "logs" / "deploy.log", "a") as log:
        from ndif.cli.lib.deploy import NDIFConnectivityError
        from ndif.cli.lib.deploy import deploy as ndif_deploy

        for attempt in range(3):  # should Ray's client proxy still lose the server it starts for a new client
            try:
                result = ndif_deploy([entry], on_message=lambda line: print(line, file=log, flush=True))
                break
            except NDIFConnectivityError as error:
                print(f"{error}; trying again", file=log, flush=True)
                if attempt == 2:
                    raise StackError(f"ndif deploy of {key} could not reach Ray: {error}; see {run / 'logs'}") from error
                time.sleep(2)
    failed = [d for d in result["deployments"] if d.get("status") != "READY"]
    if failed or not result["deployments"]:
        raise StackError(f"ndif deploy of {key} failed: {failed or result}; see {run / 'logs' / 'deploy.log'}")
    return key


@contextlib.contextmanager
def _as_a_service(run: Path) -> Iterator[None]:
    """This process with the stack's NDIF settings (as its services have them), then as it was.

    A Ray client connection made inside is closed on the way out.
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        raise StackError("this process is already connected to a Ray cluster, which NDIF's deploy would use; "
                         "deploy from another process (`nnsight-vla serve deploy MODEL --run RUN`) or call "
                         "ray.shutdown() first.")
    env = environment(run)
    names = [k for k in env if k.startswith("NDIF_")] + ["GRPC_ENABLE_FORK_SUPPORT"]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: env[name] for name in names})
    try:
        yield
    finally:
        if "ray" in sys.modules:
            import ray

            ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _marked(run: Path) -> list[int]:
    """Processes that carry this run's marker in their environment (Ray workers, gunicorn's dispatcher)."""
    pids, tag = [], f"{MARKER}={run}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if tag in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def down(run: Path, grace: float = 3.0) -> list[str]:
    """Stop every process this run started; return what was stopped.

    SIGTERM goes to each process group and to the stragglers found by marker (Ray workers),
    SIGKILL to what is left after ``grace`` seconds (Ray's own shutdown can take half a minute).
    """
    run, stopped = Path(run).resolve(), []
    for pid_file in sorted((run / "pids").glob("*.pid")):
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(f"{pid_file.stem}:{pid}")
        except ProcessLookupError:
            pass
    for pid in _marked(run):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and _marked(run):
        time.sleep(0.3)
    for pid in _marked(run):
        try:
            os.kill(pid, signal.SIGKILL)
            stopped.append(f"straggler:{pid}")
        except ProcessLookupError:
            pass
    for pid_file in (run / "pids").glob("*.pid"):
        pid_file.unlink()
    deadline = time.time() + 10  # the killed processes exit and their ports close
    while (_marked(run) or taken_ports()) and time.time() < deadline:
        time.sleep(0.3)
    while (taken := taken_ports()) and time.time() < deadline:
        time.sleep(0.3)
    if taken:
        raise StackError(f"still in use after down: {', '.join(taken)}")
    return stopped


def serve(run: Path, command: list[str], deploys: list[str] = (), env: dict | None = None) -> int:
    """Up the stack, deploy ``deploys``, run ``command``, take the stack down; return its exit code.

    ``command`` runs with ``NDIF_HOST`` set; the stack is taken down also on errors and Ctrl-C.
    Must run in a loopback-only namespace (`main` makes one).
    """
    try:
        with ThreadPoolExecutor(1) as pool:  # the models' keys (a meta build each) while the services start
            keys = pool.submit(lambda: [model_key(target) for target in deploys])
            print(f"stack up in {up(run, env):.1f} s", flush=True)
            keys = keys.result()
        for key in keys:
            t = time.time()
            print(f"deployed {deploy(run, key)} in {time.time() - t:.1f} s", flush=True)
        return subprocess.run(command, env={**os.environ, **(env or {}), "NDIF_HOST": HOST}).returncode if command else 0
    finally:
        down(run)


def main(argv: list[str]) -> int:
    """``nnsight-vla serve ARGV``: the command's exit code (a project error is raised)."""
    parser = argparse.ArgumentParser(prog="nnsight-vla serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["run", "up", "deploy", "down"])
    parser.add_argument("target", nargs="?", help="deploy: a built-in name, checkpoint folder, Hub id or model key")
    parser.add_argument("--run", type=Path, default=Path("/tmp/ndif-run"), help="folder for PID files, logs and temporary files")
    parser.add_argument("--deploy", action="append", default=[], help="run: a model to deploy first (repeat for more)")
    parser.add_argument("--size-bytes", type=int, default=None, help="deploy: the model's size (else sized on meta)")
    parser.add_argument("--dtype", default="float32", help="deploy: the dtype the server loads it in")
    argv, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(argv)
    return _step(args, argv, command) or 0


def _step(args: argparse.Namespace, argv: list[str], command: list[str]) -> int | None:
    if args.step == "run" and not in_loopback_namespace():
        if problem := namespace_problem():
            raise StackError(f"cannot make a loopback-only network namespace: {problem}.")
        inner = [sys.executable, "-m", "nnsight_vla.cli", "serve", *argv, "--", *command]
        return subprocess.run(loopback_command(inner)).returncode
    if args.step == "run":
        return serve(args.run, command, args.deploy)
    if args.step == "up":
        print(f"stack up in {up(args.run):.1f} s; clients in this namespace use NDIF_HOST={HOST}")
    elif args.step == "deploy":
        if not args.target:
            raise StackError("deploy needs a model: a built-in name, checkpoint folder, Hub id or model key.")
        t = time.time()
        key = deploy(args.run, args.target, args.size_bytes, args.dtype)
        print(f"deployed {key} in {time.time() - t:.1f} s")
    else:
        print("stopped", " ".join(down(args.run)) or "nothing")
    return None
