"""The `make demo` walk-through: load, trace, read activations, predict, steer neurons, lenses, Pi0, a LIBERO rollout.

Run ``python examples/demo.py --help`` (inside the project's environment) for its options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from nnsight_vla import Clamp, InertSiteWarning, InputError, Observation, lens, load
from nnsight_vla.cli import exit_code
from nnsight_vla.eval import evaluate


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
    result = {"model": model_name, "layers": layers, "clusters": clusters}
    result["steering"] = steer_step(model, lens.cluster(table, "up", size=10), CLAMP_VALUE)
    print("  (smol-openvla's language model was never trained on actions: it emits words, so its "
          "decoded action sits at the edge bins whatever the steering)")
    return result


#: The clamp value of the cluster-steering step (the paper's example configuration uses 4.0).
CLAMP_VALUE = 4.0


def concept_probability(model, obs, word: str) -> float:
    """Probability of `` word`` as the next token at the prompt's last position."""
    token = model.tokenizer.encode(f" {word}", add_special_tokens=False)[-1]
    with model.trace(obs):
        logits = model.lm_head.output[0, -1].save()
    return float(torch.softmax(logits.detach().float(), -1)[token])


def steer_step(model, cluster, value: float, concept: str = "up", seed: int = 0) -> dict:
    """Clamp a lens cluster with ``model.steer`` and compare, with the baseline and a random
    control of the same size per layer: the next-token probability of the concept word, and
    the predicted action."""
    obs = demo_observation()
    control = cluster.random_like(seed, d_mlp=model.spec.d_mlp)
    rows = {}
    for label, interventions in (("baseline", None), ("steered", Clamp(cluster, value)), ("control", Clamp(control, value))):
        with model.steer(interventions):
            rows[label] = (concept_probability(model, obs, concept), model.predict_action(obs))
    print(f"steer: clamp cluster {cluster.name!r} ({len(cluster)} neurons) to {value} on every forward")
    for label, (p, action) in rows.items():
        change = action - rows["baseline"][1]
        print(f"  {label:8s} P(' {concept}') = {p:.4f}   action {action}   change {change}")
    return {
        "cluster": [list(p) for p in cluster], "control": [list(p) for p in control], "value": value,
        **{f"{label}_p_{concept}": p for label, (p, _) in rows.items()},
        **{f"{label}_action": a.tolist() for label, (_, a) in rows.items()},
    }


def rollout_step(model, cluster, value: float, folder: Path, steps: int = 20) -> dict:
    """A few closed-loop LIBERO steps, baseline vs the clamped cluster vs its random control."""
    print(f"rollout: libero_spatial task 0, {steps} steps per condition (building the simulator takes a while)")
    result = evaluate(model, "libero_spatial", [0], episodes=1, steering=Clamp(cluster, value),
                      max_steps=steps, camera_size=128, record_video=True, out_dir=folder)
    for condition, means in result.summary.items():
        print(f"  {condition:9s} path {means['path_length'] * 1000:.1f} mm, max speed "
              f"{means['max_speed']:.3f} m/s, min height {means['min_height']:.3f} m")
    print(f"wrote {folder}: episodes.jsonl/csv, summary.json, statistics.json, trajectories.png, "
          "metrics.png, videos/")
    return result.summary


def pi0_step(model_name: str) -> dict:
    """Pi0: predict a chunk, steer an action-expert layer on chosen denoising steps, and show
    that the last VLM layer cannot change the actions."""
    print(f"loading {model_name} ...")
    model = load(model_name)
    spec = model.spec
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in spec.camera_names}
    obs = Observation(images, "pick up the black bowl", state=np.zeros(spec.state_dim))
    baseline = model.predict_action(obs, seed=0)
    expert = Clamp([(1, n) for n in range(4)], 4.0, tower="expert", steps=[0, 1, 2])
    with model.steer(expert):
        steered = model.predict_action(obs, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InertSiteWarning)
        with model.predict_action(obs, seed=0) as tracer:
            model.layers[-1].mlp.down_proj.input[..., :4] = 4.0
            inert = tracer.result.save()
    print(f"{model_name}: chunk {baseline.shape}; clamping 4 expert-layer-1 neurons on denoising steps 0-2 "
          f"moves the first action by {np.abs(steered - baseline)[0].max():.4f}")
    print(f"  the last VLM layer's MLP: change {np.abs(inert - baseline).max():.1f} "
          f"({len(caught)} InertSiteWarning)")
    return {
        "model": model_name, "chunk_shape": list(baseline.shape),
        "expert_steering_max_change": float(np.abs(steered - baseline).max()),
        "last_vlm_layer_max_change": float(np.abs(inert - baseline).max()),
        "inert_warnings": len(caught),
    }


def run(
    model_name: str = "tiny-openvla",
    out: str | Path | None = None,
    value: float = 8.0,
    lens_model: str | None = "smol-openvla",
    pi0_model: str | None = "tiny-pi0",
    rollout: bool = True,
    steps: int = 20,
) -> Path:
    """Run the demo and write ``demo.json`` into a run folder; returns the folder.

    ``lens_model`` (None skips it) is the model of the lens and cluster-steering steps: a real
    language model makes the vocabulary projections meaningful. ``pi0_model`` (None skips it)
    is the model of the Pi0 step. ``rollout`` ends with a short closed-loop LIBERO rollout of
    the tiny model, baseline vs steered vs random control, of ``steps`` steps each.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:  # before any model loads
        raise InputError(f"steps={steps!r}: the rollout needs a whole number of steps >= 1 (--steps 20).")
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
    # random weights: no neuron lists "up" among its top tokens; take the nearest vectors anyway
    up = lens.cluster(lens.project_value_vectors(model, progress=False), "up", size=8, allow_unmatched=True)
    cluster_steering = steer_step(model, up, value)

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
        "cluster_steering": cluster_steering,
        "torch": torch.__version__,
    }
    if lens_model is not None:
        result["lens"] = lens_step(lens_model, folder)
    if pi0_model is not None:
        result["pi0"] = pi0_step(pi0_model)
    if rollout:
        result["rollout"] = rollout_step(model, up, value, folder / "rollout", steps)
    path = folder / "demo.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny-openvla", help="built-in name or checkpoint folder")
    parser.add_argument("--out", default=None, help="run folder (default: runs/demo-<time>)")
    parser.add_argument("--value", type=float, default=8.0, help="clamp value for the steered neurons")
    parser.add_argument("--lens-model", default="smol-openvla", help="model of the lens step ('none' skips it)")
    parser.add_argument("--pi0-model", default="tiny-pi0", help="model of the Pi0 step ('none' skips it)")
    parser.add_argument("--no-rollout", action="store_true", help="skip the closed-loop LIBERO rollout")
    parser.add_argument("--steps", type=int, default=20, help="steps of each rollout condition")
    args = parser.parse_args(argv)
    return exit_code(lambda: run(
        args.model, args.out, args.value,
        lens_model=None if args.lens_model == "none" else args.lens_model,
        pi0_model=None if args.pi0_model == "none" else args.pi0_model,
        rollout=not args.no_rollout, steps=args.steps,
    ))


if __name__ == "__main__":
    sys.exit(main())
