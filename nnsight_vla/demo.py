"""The end-to-end demo: load, trace, read activations, predict an action, steer FFN neurons."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .observation import Observation
from .registry import load


def demo_observation(seed: int = 0) -> Observation:
    """A deterministic synthetic camera frame: a table, a bowl and a plate."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256]
    image = np.zeros((256, 256, 3), np.uint8)
    image[:] = (150, 120, 90)  # table
    image[(y - 150) ** 2 + (x - 90) ** 2 < 30**2] = (20, 20, 20)  # black bowl
    image[(y - 160) ** 2 + (x - 180) ** 2 < 35**2] = (230, 230, 230)  # plate
    image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    return Observation(image, "pick up the black bowl and place it on the plate")


def neurons_toward(model, word: str, layer: int, k: int) -> list[int]:
    """The ``k`` FFN neurons of ``layer`` whose value vectors (columns of ``down_proj``) point
    most toward ``word``'s unembedding row: the paper's selection, on one layer."""
    token = model.tokenizer.convert_tokens_to_ids(f"▁{word}")
    if token == model.tokenizer.unk_token_id:
        token = model.tokenizer.convert_tokens_to_ids(word)
    values = model.layers[layer].mlp.down_proj.weight.detach().float()  # [d_model, d_mlp]
    scores = model.lm_head.weight.detach().float()[token] @ values
    return scores.topk(k).indices.tolist()


def run(model_name: str = "tiny-openvla", out: str | Path | None = None, value: float = 8.0) -> Path:
    """Run the demo and write ``demo.json`` into a run folder; returns the folder."""
    folder = Path(out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"loading {model_name} ...")
    model = load(model_name)
    spec = model.spec
    print(f"  {spec.family}: {spec.n_layers} layers, d_model {spec.d_model}, d_mlp {spec.d_mlp}")
    obs = demo_observation()
    layer = spec.n_layers - 1

    with model.trace(obs):
        acts = model.layers[layer].mlp.down_proj.input.detach().save()
        logits = model.lm_head.output.save()
    top = logits[0, -1].topk(5).indices.tolist()
    print(f"layer {layer} FFN activations: shape {tuple(acts.shape)}, mean |a| {acts.abs().mean():.4f}")
    print(f"next-token top 5: {model.token_strings(top)}")

    baseline = model.predict_action(obs)
    neurons = neurons_toward(model, "up", layer, k=4)
    with model.predict_action(obs) as tracer:
        for step in tracer.iter[: spec.action_dim]:
            model.layers[layer].mlp.down_proj.input[..., neurons] = value
        steered = tracer.result.save()
    after = model.predict_action(obs)  # nothing remains of the steering
    np.set_printoptions(precision=4, suppress=True)
    print(f"action (baseline): {baseline}")
    print(f"action (clamp layer {layer} neurons {neurons} to {value}): {steered}")
    print(f"change: {steered - baseline}")

    result = {
        "model": model_name,
        "spec": spec.to_dict(),
        "instruction": obs.instruction,
        "activations": {
            "site": f"layers[{layer}].mlp.down_proj.input",
            "shape": list(acts.shape),
            "mean_abs": float(acts.abs().mean()),
        },
        "next_token_top5": model.token_strings(top),
        "steering": {"layer": layer, "neurons": neurons, "value": value, "rule": "clamp", "toward": "up"},
        "action_baseline": baseline.tolist(),
        "action_steered": np.asarray(steered).tolist(),
        "action_after_steering": after.tolist(),
        "torch": torch.__version__,
    }
    path = folder / "demo.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return folder
