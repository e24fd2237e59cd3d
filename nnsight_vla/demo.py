"""The end-to-end demo: load, trace, read activations, predict an action, steer neurons, lenses."""

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


#: Concepts whose clusters the lens step prints, and the layers it projects (the last ten).
LENS_CONCEPTS, LENS_LAYERS = ("up", "down", "left", "fast"), range(-10, 0)


def lens_step(model_name: str, folder: Path) -> dict:
    """Project a real language model's value vectors, print concept clusters, run a logit lens."""
    from . import lens

    print(f"lens: loading {model_name} ...")
    model = load(model_name)
    layers = [model.spec.n_layers + i for i in LENS_LAYERS]
    table = lens.project_value_vectors(model, top_k=10, layers=layers)
    table.write_text(folder / "lens" / "top_tokens.txt")
    clusters = {}
    for concept in LENS_CONCEPTS:
        found = lens.cluster(table, concept, size=10)
        found.to_yaml(folder / "lens" / "clusters.yaml")
        hits = table.find(concept, k=3)
        print(
            f"concept {concept!r}: {len(hits)} neurons of layers {layers[0]}-{layers[-1]} have it "
            "in their top 3 tokens; its cluster of 10 (nearest by embedding):"
        )
        print("  " + found.describe().replace("\n", "\n  "))
        clusters[concept] = {"cluster": found.flat_indices(), "top3_hits": len(hits)}
    reading = lens.logit_lens(model, demo_observation())
    reading.plot(folder / "lens" / "logit_lens.png")
    top = reading.top_tokens(layers[-1], 0, k=3)
    print(f"logit lens, position of the first action token, last layer: {top}")
    print(f"wrote {folder / 'lens'}: top_tokens.txt, clusters.yaml, logit_lens.png")
    return {"model": model_name, "layers": layers, "clusters": clusters}


def run(
    model_name: str = "tiny-openvla",
    out: str | Path | None = None,
    value: float = 8.0,
    lens_model: str | None = "smol-openvla",
) -> Path:
    """Run the demo and write ``demo.json`` into a run folder; returns the folder.

    ``lens_model`` (None skips it) is the model of the lens step: a real language model makes
    the vocabulary projections meaningful.
    """
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
    if lens_model is not None:
        result["lens"] = lens_step(lens_model, folder)
    path = folder / "demo.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return folder
