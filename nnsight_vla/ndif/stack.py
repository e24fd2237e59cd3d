"""Start and stop a local NDIF stack (redis, moto S3, Ray head, NDIF controller and API) on loopback, inside a loopback-only network namespace.

Usage (the whole command, and every client, inside one namespace that has only ``lo``)::

    python -m nnsight_vla.ndif.stack up --run RUN_DIR
    python -m nnsight_vla.ndif.stack deploy --run RUN_DIR 'nnsight_vla_openvla.model.OpenVLA:{...}'
    python -m nnsight_vla.ndif.stack down --run RUN_DIR

Every process is started by id in its own process group; PID files go to ``RUN_DIR/pids``, logs to
``RUN_DIR/logs``, temporary files (Ray's, gunicorn's) to ``RUN_DIR``; ``down`` stops every one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

#: Ports the stack listens on (all on 127.0.0.1).
PORTS = {"redis": 6390, "s3": 9010, "ray_gcs": 6395, "ray_client": 10001, "ray_dashboard": 8275, "api": 8011}
#: Environment variable carried by every process of a stack: how ``down`` finds stragglers.
MARKER = "NNSIGHT_VLA_NDIF_RUN"
BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """The stack cannot start or stop as asked."""


def check_loopback_only() -> None:
    """Refuse to run outside a network namespace whose only interface is ``lo`` (Ray binds every interface)."""
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        raise StackError(
            f"this network namespace has interfaces {names}; Ray would listen on all of them. Run inside a "
            "loopback-only namespace: scripts/loopback.sh <command>, or `setsid unshare -n sleep infinity` and nsenter."
        )
    up = subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True, text=True).stdout
    if "UP" not in up.split("<", 1)[-1].split(">", 1)[0]:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports() -> None:
    taken = [f"{name} port {port}" for name, port in PORTS.items() if not port_free(port)]
    if taken:
        raise StackError(f"already in use on 127.0.0.1: {', '.join(taken)}; stop what holds it (`down --run ...`).")


def wait_port(port: int, name: str, timeout: float, run: Path) -> None:
    deadline = time.time() + timeout
    pid_file = run / "pids" / f"{name}.pid"
    while time.time() < deadline:
        if pid_file.exists() and not Path(f"/proc/{pid_file.read_text()}").exists():
            raise StackError(f"{name} exited before listening on 127.0.0.1:{port}; see {run / 'logs' / name}.log")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise StackError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {run / 'logs' / name}.log")


def environment(run: Path) -> dict:
    """The ``NDIF_*`` settings every service (and ``ndif`` CLI call) of this stack shares."""
    env = dict(os.environ)
    env.update({
        MARKER: str(run),
        "NDIF_REDIS_URL": f"redis://127.0.0.1:{PORTS['redis']}",
        "NDIF_OBJECT_STORE_URL": f"http://127.0.0.1:{PORTS['s3']}",
        "NDIF_OBJECT_STORE_ACCESS_KEY": "testing", "NDIF_OBJECT_STORE_SECRET_KEY": "testing",
        "NDIF_RAY_ADDRESS": f"ray://127.0.0.1:{PORTS['ray_client']}",
        "NDIF_API_URL": f"http://127.0.0.1:{PORTS['api']}",
        "NDIF_HOME": str(run), "NDIF_RAY_TEMP_DIR": str(run / "ray"),
        "NDIF_DEFAULT_DTYPE": "float32", "NDIF_MINIMUM_DEPLOYMENT_TIME_SECONDS": "0",
        "NDIF_MODEL_IMPORT_PATH": "nnsight_vla.ndif.actor.CPUModelActor",
        "NDIF_CONTROLLER_IMPORT_PATH": "nnsight_vla.ndif.controller.ControllerActor",
        "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "GRPC_ENABLE_FORK_SUPPORT": "0",
        "TMPDIR": str(run / "tmp"), "HOME": str(run / "home"),  # gunicorn writes ~/.gunicorn
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("RAY_ADDRESS", None)
    return env


def start(run: Path, name: str, argv: list[str], env: dict) -> int:
    """Start one service by id in its own process group, PID file and log in the run folder."""
    log = open(run / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run, start_new_session=True)
    (run / "pids" / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def ray_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()", *args]


def up(run: Path) -> float:
    """Start the stack; return the seconds until the API answers ``/connected``."""
    t0 = time.time()
    check_loopback_only()
    check_ports()
    for sub in ("pids", "logs", "ray", "tmp", "home"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    env = environment(run)
    (run / "env.json").write_text(json.dumps({k: v for k, v in env.items() if k.startswith("NDIF_")}, indent=1))
    start(run, "redis", ["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", str(run / "tmp")], env)
    start(run, "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(PORTS["s3"])], env)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    resources = {"head": 10, "cuda_memory_bytes": 4_000_000_000, "cpu_memory_bytes": mem}
    start(run, "ray", ray_argv(
        "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=4", "--num-gpus=1",
        f"--resources={json.dumps(resources)}", f"--port={PORTS['ray_gcs']}",
        f"--ray-client-server-port={PORTS['ray_client']}", "--include-dashboard=true",  # the controller lists nodes through it
        "--dashboard-host=127.0.0.1", f"--dashboard-port={PORTS['ray_dashboard']}",
        f"--temp-dir={run / 'ray'}", "--disable-usage-stats"), env)
    wait_port(PORTS["redis"], "redis", 20, run)
    wait_port(PORTS["s3"], "s3", 60, run)
    wait_port(PORTS["ray_gcs"], "ray", 90, run)
    wait_port(PORTS["ray_client"], "ray", 90, run)
    wait_port(PORTS["ray_dashboard"], "ray", 90, run)
    controller = subprocess.run(
        [sys.executable, "-m", "ndif.services.ray.deployments.controller.controller"],
        env={**env, "RAY_ADDRESS": f"127.0.0.1:{PORTS['ray_gcs']}"}, cwd=run,
        stdout=open(run / "logs" / "controller.log", "ab"), stderr=subprocess.STDOUT, timeout=180)
    if controller.returncode:
        raise StackError(f"NDIF's controller failed to launch; see {run / 'logs' / 'controller.log'}")
    start(run, "api", [str(BIN / "gunicorn"), "--config", "python:ndif.services.api.gunicorn_conf",
                       "ndif.services.api.app:app", "--bind", f"127.0.0.1:{PORTS['api']}"], env)
    wait_port(PORTS["api"], "api", 120, run)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['api']}/connected", timeout=5) as r:
                if r.status == 200 and json.loads(r.read() or b"false") not in (False, None):
                    return time.time() - t0
        except Exception:
            pass
        time.sleep(0.5)
    raise StackError(f"the API did not report Ray connected within 120 s; see {run / 'logs'}")


def deploy(run: Path, key: str, size_bytes: int | None = None, dtype: str = "float32") -> None:
    """Deploy one model key (``module.Class:json``), pinned, through ``ndif deploy -f``."""
    import yaml

    entry = {"checkpoint": key, "model_key": key, "dtype": dtype, "pinned": True}
    if size_bytes:
        entry["size_bytes"] = size_bytes
    path = run / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    out = subprocess.run([str(BIN / "ndif"), "deploy", "-f", str(path)], env=environment(run), cwd=run,
                         capture_output=True, text=True, timeout=300)
    (run / "logs" / "deploy.log").write_text(out.stdout + out.stderr)
    if out.returncode:
        raise StackError(f"ndif deploy failed ({out.returncode}):\n{out.stdout}{out.stderr}")


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


def down(run: Path, grace: float = 10.0) -> list[str]:
    """Stop every process this run started (by process group, then stragglers by id); return what was stopped."""
    stopped = []
    for pid_file in sorted((run / "pids").glob("*.pid")):
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(f"{pid_file.stem}:{pid}")
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
    time.sleep(0.5)
    taken = [f"{name} port {port}" for name, port in PORTS.items() if not port_free(port)]
    if taken:
        raise StackError(f"still in use after down: {', '.join(taken)}")
    return stopped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nnsight_vla.ndif.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "deploy"])
    parser.add_argument("key", nargs="?", help="model key to deploy (deploy only)")
    parser.add_argument("--run", type=Path, required=True, help="run folder (PID files, logs, temporary files)")
    parser.add_argument("--size-bytes", type=int, default=None)
    args = parser.parse_intermixed_args(argv)
    run = args.run.resolve()
    try:
        if args.command == "up":
            print(f"stack up in {up(run):.1f} s; NDIF_HOST=http://127.0.0.1:{PORTS['api']}")
        elif args.command == "deploy":
            t = time.time()
            deploy(run, args.key, args.size_bytes)
            print(f"deployed {args.key} in {time.time() - t:.1f} s")
        else:
            print("stopped", " ".join(down(run)) or "nothing")
    except StackError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
