"""End-to-end check against a local NDIF stack: remote trace, steering and predict_action equal local runs bit for bit.

Run inside the stack's loopback-only namespace, after `python -m nnsight_vla.ndif.stack up` and `deploy`:
    NDIF_HOST=http://127.0.0.1:8011 python scripts/ndif_check.py
"""

import os
import socket
import sys
import time

os.environ.setdefault("NDIF_HOST", "http://127.0.0.1:8011")
if sorted(name for _, name in socket.if_nameindex()) != ["lo"]:
    sys.exit("error: run this inside the stack's loopback-only network namespace")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation  # noqa: E402

LAYER, NEURONS, VALUE = 1, [3, 17], 5.0


def timed(label, fn):
    t = time.perf_counter()
    out = fn()
    print(f"{label}: {1000 * (time.perf_counter() - t):.0f} ms", flush=True)
    return out


def main() -> None:
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    obs = Observation(image, "pick up the black bowl")
    client = nnsight_vla.load("tiny-openvla", dispatch=False)
    local = nnsight_vla.load("tiny-openvla")
    assert not client.dispatched
    print("model key:", client.to_model_key(), flush=True)

    def trace(model, **kw):
        with model.trace(obs, **kw):
            x = model.layers[1].mlp.down_proj.input.save()
        return x

    expected = trace(local)
    for i in range(3):
        got = timed(f"remote trace {i}", lambda: trace(client, remote=True))
        assert got.dtype == expected.dtype and torch.equal(got, expected), (got.dtype, (got - expected).abs().max())
    print("remote trace == local trace (bit for bit):", tuple(got.shape), got.dtype)
    print("client still not dispatched:", not client.dispatched)

    def steer(model, **kw):
        with model.trace(obs, **kw):
            model.layers[LAYER].mlp.down_proj.input[..., NEURONS] = VALUE
            logits = model.lm_head.output.save()
        return logits

    expected_steer = steer(local)
    got_steer = timed("remote steering", lambda: steer(client, remote=True))
    assert torch.equal(got_steer, expected_steer)
    assert not torch.equal(expected_steer, timed("remote clean logits", lambda: _logits(client)))
    print("remote steering == local steering (bit for bit)")

    try:
        def predict():
            with client.predict_action(obs, remote=True) as tracer:
                action = tracer.result.save()
            return action

        action = timed("remote predict_action", predict)
        np.testing.assert_array_equal(action, local.predict_action(obs))
        print("remote predict_action == local:", np.asarray(action).round(4).tolist())
    except Exception as err:  # not required for the first proof: report and go on
        print(f"remote predict_action: FAILED {type(err).__name__}: {str(err)[:800]}")


def _logits(model):
    with model.trace(Observation(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8),
                                 "pick up the black bowl"), remote=True):
        logits = model.lm_head.output.save()
    return logits


if __name__ == "__main__":
    main()
