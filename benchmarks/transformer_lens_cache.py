"""Caching activations through a TransformerLens bridge vs an nnsight trace vs plain torch hooks, in one run.

On a mid-size random OpenVLA (8 Llama layers, width 1024), every variant records the
residual stream after each layer and the FFN activations (``blocks.{L}.hook_resid_post``,
``blocks.{L}.mlp.hook_post``) of the prefill:

  bridge        bridge.run_with_cache(**bridge_inputs(model, obs), names_filter=...)
  plain-eager   the language model on the same inputs, eager attention (as the bridge runs it),
                with torch forward hooks saving the same tensors
  plain         the same with the model's own attention (SDPA)
  nnsight       with model.trace(obs): the same sites saved (the whole VLA: vision included)
  plain-full    the whole VLA forward with torch hooks saving the same tensors

and prints medians and the ratios bridge/plain-eager (target <= 1.3), bridge/plain and
nnsight/plain-full, then the memory the bridge adds beyond the model's weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from steering_overhead import mid_openvla  # noqa: E402

from nnsight_vla import Site  # noqa: E402
from nnsight_vla.transformer_lens import bridge_inputs, to_bridge  # noqa: E402
from nnsight_vla.transformer_lens.bridge import shared_copy  # noqa: E402


def hooked_run(module: torch.nn.Module, sites: list[tuple[torch.nn.Module, bool]], run):
    """Run ``run()`` with torch hooks saving each site (a module's input or output)."""
    saved, handles = [], []
    for target, is_input in sites:
        if is_input:
            handles.append(target.register_forward_pre_hook(lambda m, a: saved.append(a[0].detach())))
        else:
            handles.append(target.register_forward_hook(
                lambda m, a, out: saved.append((out[0] if isinstance(out, tuple) else out).detach())))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, obs, _, _, _ = mid_openvla(8, 1024)
    n = model.spec.n_layers
    sites = [Site(layer, kind) for layer in range(n) for kind in ("neurons", "resid")]
    names = {s.hook_name for s in sites}
    bridge = to_bridge(model)
    inputs = bridge_inputs(model, obs)
    lm_kwargs = {"inputs_embeds": inputs["input"], "attention_mask": inputs["attention_mask"],
                 "position_ids": inputs["position_ids"]}
    net = model._module
    eager = shared_copy(net.language_model)
    eager.config._attn_implementation = "eager"

    def lm_sites(lm):
        layers = lm.model.layers
        return [(layers[s.layer].mlp.down_proj, True) if s.kind == "neurons" else (layers[s.layer], False)
                for s in sites]

    def bridge_run():
        with torch.no_grad():
            bridge.run_with_cache(**inputs, names_filter=lambda name: name in names)

    def nnsight_run():
        with model.trace(obs):
            for site in sites:
                site.read(model).save()

    full_inputs = model._inputs([obs])
    variants = {
        "bridge": bridge_run,
        "plain-eager": lambda: hooked_run(eager, lm_sites(eager), lambda: eager(**lm_kwargs)),
        "plain": lambda: hooked_run(net.language_model, lm_sites(net.language_model), lambda: net.language_model(**lm_kwargs)),
        "nnsight": nnsight_run,
        "plain-full": lambda: hooked_run(net, lm_sites(net.language_model), lambda: net(**full_inputs)),
    }
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(args.reps):
                fn()
            times[name].append((time.perf_counter() - start) / args.reps)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"torch threads {torch.get_num_threads()}; mid-size OpenVLA (8 layers, width 1024), "
          f"prefill of {inputs['input'].shape[1]} positions, {len(sites)} sites cached")
    for name, t in med.items():
        print(f"  {name:12s} {t * 1000:8.1f} ms (median of {args.rounds} rounds x {args.reps})")
    print(f"  ratio bridge/plain-eager = {med['bridge'] / med['plain-eager']:.3f}   (target <= 1.3)")
    print(f"  ratio bridge/plain       = {med['bridge'] / med['plain']:.3f}")
    print(f"  ratio nnsight/plain-full = {med['nnsight'] / med['plain-full']:.3f}")
    ours = {t.data_ptr() for t in net.parameters()}
    lm_bytes = sum(t.numel() * t.element_size() for t in net.language_model.parameters())
    extra = sum(t.numel() * t.element_size() for t in bridge.parameters() if t.data_ptr() not in ours)
    print(f"  memory: the bridge adds {extra / 2**20:.2f} MiB to the language model's "
          f"{lm_bytes / 2**20:.0f} MiB of weights (bridged/plain = {(lm_bytes + extra) / lm_bytes:.4f})")


if __name__ == "__main__":
    main()
