"""Run by test_ndif as the client of `nnsight-vla serve run` (inside its loopback-only namespace):
remote runs against the real NDIF server, compared with local runs. Writes result.json.

argv: OUT CLIENT_HF_CACHE SAVED_FOLDER. The server's Hub cache holds org/tiny-openvla with its
weights; this client's holds the same commit without them.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

OUT, CLIENT_CACHE, SAVED = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["HF_HUB_CACHE"] = CLIENT_CACHE  # before huggingface_hub is imported
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from nnsight import CONFIG  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Clamp, NeuronCluster, Observation  # noqa: E402
from nnsight_vla.ndif.stack import HOST  # noqa: E402

CONFIG.APP.REMOTE_LOGGING = False
assert os.environ["NDIF_HOST"] == HOST, os.environ.get("NDIF_HOST")
result: dict = {}
image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
OBS = Observation(image, "pick up the black bowl")
OBS2 = Observation(image[::-1], "open the top drawer")
CLUSTER = NeuronCluster([(1, 3), (1, 17), (0, 40)])


def same(a, b) -> bool:
    a, b = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a), torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def record(name, fn):
    try:
        result[name] = fn()
    except Exception as err:  # the test names the failing check with the error
        result[name] = {"error": f"{type(err).__name__}: {err}"[:3000]}
    print(name, json.dumps(result[name])[:300], flush=True)


PI_OBS = Observation({"image": image[:64, :64], "image2": image[64:128, :64]}, "pick up the black bowl",
                     state=np.linspace(-1, 1, 8))


def pi_predict(model, **kw):
    """Steered Pi0-family prediction: its velocities at the 10 denoising steps and the chunk
    (with ``blocking=False``: the request's backend, whose poll returns them by name)."""
    with model.predict_action(PI_OBS, seed=0, **kw) as tracer:
        model.layers[1].mlp.down_proj.input[..., 5] = 4.0  # the VLM runs once
        velocities = list().save()
        for step in tracer.iter[:10]:  # the 10 denoising steps
            model.expert.layers[1].mlp.down_proj.input[..., 3] = 4.0
            velocities.append(model.action_out_proj.output)
        chunk = tracer.result.save()
    if kw.get("blocking", True) is False:
        return tracer.backend
    return velocities, np.asarray(chunk)


def poll(backend, timeout=180):
    """A non-blocking request's saved values, and how many polls it took."""
    got, polls, deadline = None, 0, time.time() + timeout
    while got is None and time.time() < deadline:
        time.sleep(0.05)
        got, polls = backend(), polls + 1
    return got, polls


# Pi0.5 is not deployed beforehand: its first request, sent now and read last, has NDIF
# provision it while the OpenVLA checks run.
try:
    pi05_backend = pi_predict(nnsight_vla.load("tiny-pi05", dispatch=False), remote=True, blocking=False)
except Exception as err:  # check_pi05 records it
    pi05_backend = err

# -- OpenVLA from a Hub id: the client has its configuration only --------------------------------
client = nnsight_vla.load("org/tiny-openvla", dispatch=False)
result["key"] = client.to_model_key()


def trace(model, obs=OBS, **kw):
    with model.trace(obs, **kw) as tracer:
        neurons = model.layers[1].mlp.down_proj.input.save()
        logits = model.lm_head.output.save()
    if kw.get("blocking", True) is False:
        return tracer.backend
    return neurons, logits


# The first request (OpenVLA is not deployed either): sent before the local model loads.
first_sent = time.perf_counter()
first_backend = trace(client, remote=True, blocking=False)
local = nnsight_vla.load(SAVED)  # the same weights, from the folder the server's cache holds


def check_trace():
    got, _ = poll(first_backend)
    first = time.perf_counter() - first_sent
    times = [timed(lambda: trace(client, remote=True))[1] for _ in range(3)]
    remote, expected = (got["neurons"], got["logits"]), trace(local)
    again = trace(client, remote=True)  # a blocking request
    return {"equal": all(same(r, e) for r, e in zip([*remote, *again], expected * 2)), "first_s": first,
            "warm_ms": 1000 * min(times), "dtype": str(remote[0].dtype)}


def steered(model, how, **kw):
    with model.trace(OBS, **kw):
        if how == "clamp":
            Clamp(CLUSTER, 5.0).apply(model)
        else:
            model.layers[1].mlp.down_proj.input[..., [3, 17]] = 5.0
        logits = model.lm_head.output.save()
    return logits


def check_steering():
    clean = trace(local)[1]
    out = {}
    for how in ("clamp", "edit"):
        remote, expected = steered(client, how, remote=True), steered(local, how)
        out[how] = {"equal": same(remote, expected), "acted": not same(expected, clean)}
    with local.steer(Clamp(CLUSTER, 5.0)):  # the same clamp as a torch hook
        hooked = trace(local)[1]
    out["clamp"]["equals_steer"] = same(steered(client, "clamp", remote=True), hooked)
    return out


def predict(model, **kw):
    with model.predict_action(OBS, **kw) as tracer:
        tokens = list().save()
        for step in tracer.iter[:7]:  # the 7 forwards that emit action tokens
            Clamp(CLUSTER, 5.0).apply(model, step)
            tokens.append(model.lm_head.output[0, -1].argmax(-1))
        action = tracer.result.save()
    return [int(t) for t in tokens], np.asarray(action)


def check_predict():
    (tokens, action), (local_tokens, local_action) = predict(client, remote=True), predict(local)
    with local.steer(Clamp(CLUSTER, 5.0)):
        hooked = local.predict_action(OBS)
    return {"equal": tokens == local_tokens and same(action, local_action), "steps": len(tokens),
            "equals_steer": same(action, hooked), "action": action.tolist()}


def session(model, **kw):
    with model.session(**kw):
        with model.trace(OBS):
            donor = model.layers[1].mlp.down_proj.input[:, -1].save()
        with model.trace(OBS2):
            model.layers[1].mlp.down_proj.input[:, -1] = donor
            patched = model.lm_head.output[:, -1].save()
    return donor, patched


def check_session():
    remote, expected = session(client, remote=True), session(local)
    return {"equal": all(same(r, e) for r, e in zip(remote, expected))}


def check_nonblocking():
    with client.trace(OBS, remote=True, blocking=False) as tracer:
        neurons = client.layers[1].mlp.down_proj.input.save()  # noqa: F841 (read from the poll)
    got, polls = poll(tracer.backend, 120)
    job = tracer.backend.job_id
    return {"job_id": job, "polls": polls, "equal": got is not None and same(got["neurons"], trace(local)[0])}


def check_error():
    try:
        with client.trace(OBS, remote=True):
            client.layers[1].mlp.down_proj.input[..., 10**6] = 0.0
        caught = None
    except Exception as err:
        caught = f"{type(err).__module__}.{type(err).__name__}: {err}"
    after = trace(client, remote=True)
    return {"error": caught, "next_equal": all(same(r, e) for r, e in zip(after, trace(local)))}


def s3_objects() -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ.get("NDIF_OBJECT_STORE_URL", "http://127.0.0.1:9010"),
                      aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    return sum(s3.list_objects_v2(Bucket=b["Name"]).get("KeyCount", 0) for b in s3.list_buckets()["Buckets"])


def check_large():
    def big(model, **kw):
        with model.trace(OBS, **kw):
            out = (model.lm_head.output[..., None] * torch.linspace(1, 2, 8)).save()  # 12 MB, incompressible
        return out

    before = s3_objects()
    remote = big(client, remote=True)
    return {"bytes": remote.numel() * remote.element_size(), "equal": same(remote, big(local)),
            "s3_objects_added": s3_objects() - before}


def check_concurrent(n=10):
    expected = {}
    for i in range(n):
        with local.trace(OBS):
            local.layers[1].mlp.down_proj.input[..., 3] = float(i)
            expected[i] = local.lm_head.output[:, -1].save()
    clients = [nnsight_vla.load("org/tiny-openvla", dispatch=False) for _ in range(n)]
    got, errors, barrier = {}, [], threading.Barrier(n)

    def one(i):
        try:
            barrier.wait()
            with clients[i].trace(OBS, remote=True):
                clients[i].layers[1].mlp.down_proj.input[..., 3] = float(i)
                logits = clients[i].lm_head.output[:, -1].save()
            got[i] = logits
        except Exception as err:
            errors.append(f"{i}: {type(err).__name__}: {err}"[:500])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return {"returned": len(got), "correct": sum(same(got[i], expected[i]) for i in got), "errors": errors,
            "seconds": time.perf_counter() - t}


for name, fn in [("trace", check_trace), ("steering", check_steering), ("predict", check_predict),
                 ("session", check_session), ("nonblocking", check_nonblocking), ("error", check_error),
                 ("large", check_large), ("concurrent", check_concurrent)]:
    record(name, fn)
result["client_dispatched"] = client.dispatched
result["client_files"] = sorted(p.name for p in Path(CLIENT_CACHE).rglob("*") if p.is_file() or p.is_symlink())

# -- Pi0 (deployed by `serve run --deploy tiny-pi0`) and Pi0.5: the expert's denoising steps -------
pi_client, pi_local = nnsight_vla.load("tiny-pi0", dispatch=False), nnsight_vla.load("tiny-pi0")

def check_pi0():
    (vel, chunk), (local_vel, local_chunk) = pi_predict(pi_client, remote=True), pi_predict(pi_local)
    plain, remote_plain = pi_local.predict_action(PI_OBS, seed=0), pi_plain(pi_client, remote=True)
    return {"steps": len(vel), "equal": len(vel) == len(local_vel) and all(map(same, vel, local_vel))
            and same(chunk, local_chunk), "acted": not same(chunk, plain), "plain_equal": same(remote_plain, plain),
            "velocities_equal": [same(a, b) for a, b in zip(vel, local_vel)], "dtypes": [str(chunk.dtype), str(local_chunk.dtype)],
            "max_diff": float(np.abs(chunk - local_chunk).max())}


def pi_plain(model, **kw):
    with model.predict_action(PI_OBS, seed=0, **kw) as tracer:
        chunk = tracer.result.save()
    return np.asarray(chunk)


record("pi0", check_pi0)


def check_pi05():  # the request sent first: NDIF provisioned Pi0.5 for it
    if isinstance(pi05_backend, Exception):
        raise pi05_backend
    got, _ = poll(pi05_backend)
    vel, chunk = got["velocities"], np.asarray(got["chunk"])
    local_vel, local_chunk = pi_predict(nnsight_vla.load("tiny-pi05"))
    return {"steps": len(vel), "equal": all(map(same, vel, local_vel)) and same(chunk, local_chunk)}


record("pi05", check_pi05)
(OUT / "result.json").write_text(json.dumps(result, indent=1))
