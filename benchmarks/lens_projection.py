"""Value-vector projection: this lens vs the bare matmuls (floor) vs the paper's procedure, in float32 and bf16.

On one model (default: smol-openvla, the real SmolLM2-135M: 30 layers x 1536 value vectors,
vocabulary 49152), in one run, interleaved in rounds so machine noise hits all variants alike,
each in float32 and in bfloat16 (the paper's reference code's default):

  machine    one chunk-shaped matmul repeated on the same buffers: the machine's speed here
  floor      the chunked matmuls of every value vector with the unembedding, nothing else, in
             the dtype the lens multiplies in (`matmul_dtype`: on a CPU without bf16 units,
             float32 on bf16-rounded inputs)
  native     (only on such a CPU) the same matmuls in PyTorch's emulated bf16
  reference  the paper's code path: an identity matrix through each down_proj, full logits
             per batch of 2048, topk, then Python decoding of every token, row by row, and
             the text file (in bf16 only: its default)
  lens       project_value_vectors(dtype=...) + the text file, end to end

Prints the median time and peak memory (resident-set growth) of each, per dtype the ratio
lens/floor (target <= 1.10) and floor/machine throughput (target >= 0.8), the bf16 lens's
speed-up over the float32 lens, bf16's top-1 and top-10 agreement with float32, lens/reference
(target < 0.5 in bf16), whether lens and reference agree on every top-k id, and the lens's
peak for fewer layers and other chunk sizes (it should follow the chunk size, not the layer
count). ``--layers N`` projects the first N layers only (every variant alike), for CPUs where
emulated bf16 makes the full model's reference take many minutes per round.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla.lens import project_value_vectors  # noqa: E402
from nnsight_vla.towers import get_tower  # noqa: E402
from nnsight_vla.lens.value_vectors import CHUNK_LOGITS, matmul_dtype  # noqa: E402

TOP_K, REFERENCE_BATCH = 10, 2048


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measured(fn):
    """Run ``fn``; return (result, seconds, peak resident-set growth in bytes)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start_rss, start = _status("VmRSS"), time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, _status("VmHWM") - start_rss


def floor(vectors, unembed, batch):
    """Every value vector times the unembedding, ``batch`` vectors per matmul into one buffer."""
    logits = torch.empty(batch, unembed.shape[0], dtype=unembed.dtype)
    for a in range(0, len(vectors), batch):
        chunk = vectors[a : a + batch]
        torch.mm(chunk, unembed.T, out=logits[: len(chunk)])


def machine(batch, unembed, repeats: int = 5) -> float:
    """Seconds per chunk-shaped matmul, repeated on the same (hot) buffers."""
    chunk = torch.randn(batch, unembed.shape[1]).to(unembed.dtype)
    logits = torch.empty(batch, unembed.shape[0], dtype=unembed.dtype)
    torch.mm(chunk, unembed.T, out=logits)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(chunk, unembed.T, out=logits)
    return (time.perf_counter() - start) / repeats


def reference(model, modules, unembed, out: Path):
    """The paper repository's procedure, re-implemented: identity through down_proj, logits per
    batch, topk, one tokenizer.decode per token id, a text line per vector (in ``unembed``'s dtype)."""
    actions = model.spec.action_token_ids

    def label(token: int) -> str:
        if token in actions:
            return f"[action: {model.action_tokenizer.decode(np.array([token]))[0]:.3f}]"
        return repr(model.tokenizer.decode([token]))

    with torch.no_grad():
        vectors = torch.cat([m(torch.eye(m.in_features, dtype=m.weight.dtype)) for m in modules]).to(unembed.dtype)
        all_ids, texts = [], []
        for a in range(0, len(vectors), REFERENCE_BATCH):
            logits = (vectors[a : a + REFERENCE_BATCH] @ unembed.T).float()
            for row in torch.topk(logits, k=TOP_K, dim=1).indices.tolist():
                all_ids.append(row)
                texts.append([label(t) for t in row])
    with out.open("w") as f:
        for i, tokens in enumerate(texts):
            f.write(f"[{i:04d}] {', '.join(tokens)}\n")
    return np.array(all_ids)


def lens(model, out: Path, layers, **kw):
    # cached=False: each round projects (the table kept on disk would otherwise be read back)
    table = project_value_vectors(model, top_k=TOP_K, progress=False, layers=layers, cached=False, **kw)
    table.write_text(out)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smol-openvla")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None, help="project the first N layers only")
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: big blocks go back to the OS when freed

    model = nnsight_vla.load(args.model)
    tower = get_tower(model)
    unembed = tower.unembedding()
    n = args.layers or len(tower.layers)
    weights = [tower.value_vectors(i) for i in range(n)]
    modules = [tower.layers[i].mlp.down_proj._module for i in range(n)]
    batch = max(1, CHUNK_LOGITS // unembed.shape[0])
    all_vectors = torch.cat([w.T for w in weights])  # made before timing: the floor is matmuls only
    bf16 = (all_vectors.bfloat16(), unembed.bfloat16())
    kernel = matmul_dtype(torch.bfloat16, unembed.device)
    as_lens = tuple(t.to(kernel) for t in bf16)  # what the lens multiplies for a bf16 table
    tmp = Path(tempfile.mkdtemp())
    layers = range(n)
    variants = {
        "floor fp32": lambda: floor(all_vectors, unembed, batch),
        "floor bf16": lambda: floor(*as_lens, batch),
        **({} if kernel == torch.bfloat16 else {"native bf16": lambda: floor(*bf16, batch)}),
        "reference bf16": lambda: reference(model, modules, bf16[1], tmp / "reference.txt"),
        "lens fp32": lambda: lens(model, tmp / "lens.txt", layers, dtype="float32"),
        "lens bf16": lambda: lens(model, tmp / "lens.txt", layers, dtype="bfloat16"),
    }
    times = {name: [] for name in variants}
    peaks = {name: [] for name in variants}
    results = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            results[name], seconds, peak = measured(fn)
            times[name].append(seconds)
            peaks[name].append(peak)
    speed = {"fp32": machine(batch, unembed), "bf16": machine(batch, as_lens[1])}

    vectors = n * weights[0].shape[1]
    flops = 2 * vectors * unembed.shape[0] * unembed.shape[1]
    print(
        f"{args.model}: {n} layers x {weights[0].shape[1]} value vectors = {vectors}, vocabulary "
        f"{unembed.shape[0]}, d_model {unembed.shape[1]}; torch threads {torch.get_num_threads()}; "
        f"lens chunk {batch} vectors; median of {args.rounds} rounds; a bf16 table's matmuls run in "
        f"{str(kernel)[6:]}" + ("" if kernel == torch.bfloat16 else " (this CPU has no bf16 units)")
    )
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in variants:
        print(f"  {name:15s} {med[name]:7.2f} s   peak +{max(peaks[name]) / 2**20:7.1f} MiB")
    for dtype in ("fp32", "bf16"):
        peak = 2 * batch * unembed.shape[0] * unembed.shape[1] / speed[dtype] / 1e9
        achieved = flops / med[f"floor {dtype}"] / 1e9
        print(f"{dtype}: machine {peak:.0f} GFLOP/s for the chunk's shape, floor {achieved:.0f} GFLOP/s "
              f"(floor/machine {achieved / peak:.2f}, target >= 0.8); "
              f"lens/floor {med[f'lens {dtype}'] / med[f'floor {dtype}']:.3f} (target <= 1.10)")
    if "native bf16" in med:
        print(f"emulated bf16 matmuls take {med['native bf16'] / med['floor bf16']:.1f}x the float32 "
              "ones on the rounded inputs")
    print(f"bf16 lens speed-up over the fp32 lens: {med['lens fp32'] / med['lens bf16']:.2f}x")
    print(f"lens bf16/reference bf16 = {med['lens bf16'] / med['reference bf16']:.3f}   (target < 0.5)")
    exact, rounded = results["lens fp32"].ids.reshape(vectors, TOP_K), results["lens bf16"].ids.reshape(vectors, TOP_K)
    shared = np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(exact, rounded)])
    print(f"bf16 vs fp32: top-1 agreement {np.mean(exact[:, 0] == rounded[:, 0]):.4f}, "
          f"top-{TOP_K} set overlap {shared:.4f}")
    paper = results["reference bf16"]
    print(f"bf16 lens vs bf16 reference: top-1 agreement {np.mean(paper[:, 0] == rounded[:, 0]):.4f}, "
          f"top-{TOP_K} ids identical: {np.array_equal(rounded, paper)}")

    print("lens peak memory by layers and chunk size (it should follow the chunk, not the layers):")
    for layers, size in [(min(3, n), batch), (n, batch), (n, 4 * batch), (n, batch // 4)]:
        run = partial(lens, model, tmp / "lens.txt", range(layers), batch_size=size)
        _, seconds, peak = measured(run)
        mib = size * unembed.shape[0] * 4 / 2**20
        print(
            f"  {layers:3d} layers, chunk {size:5d} vectors ({mib:6.1f} MiB of logits): "
            f"peak +{peak / 2**20:7.1f} MiB, {seconds:6.2f} s"
        )
    table = results["lens fp32"]
    counts = {}
    for word in (" up", " down", " left", " fast"):
        (token,) = model.tokenizer(word, add_special_tokens=False).input_ids
        counts[word] = int((table.ids[..., :3] == token).any(-1).sum())
    print(f"neurons with the token among their top 3: {counts}")


if __name__ == "__main__":
    main()
