"""Value-vector projection: this lens vs the bare matmuls (floor) vs the paper's procedure.

On one model (default: smol-openvla, the real SmolLM2-135M: 30 layers x 1536 value vectors,
vocabulary 49152), in one run, interleaved in rounds so machine noise hits all variants alike:

  floor      the chunked matmuls of every value vector with the unembedding, nothing else
  reference  the paper's code path: an identity matrix through each down_proj, full logits
             per batch of 2048, topk, then Python decoding of every token, row by row, and
             the text file
  lens       project_value_vectors + the text file, end to end

Prints the median time and peak memory (resident-set growth) of each, the ratios lens/floor
(target <= 1.3) and lens/reference (target < 1), whether lens and reference agree on every
top-k id, and the lens's peak for fewer layers and other chunk sizes (it should follow the
chunk size, not the layer count).
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
from nnsight_vla.lens.value_vectors import CHUNK_LOGITS  # noqa: E402

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


def reference(model, modules, unembed, out: Path):
    """The paper repository's procedure, re-implemented: identity through down_proj, logits per
    batch, topk, one tokenizer.decode per token id, a text line per vector."""
    actions = model.spec.action_token_ids

    def label(token: int) -> str:
        if token in actions:
            return f"[action: {model.action_tokenizer.decode(np.array([token]))[0]:.3f}]"
        return repr(model.tokenizer.decode([token]))

    with torch.no_grad():
        vectors = torch.cat([m(torch.eye(m.in_features, dtype=unembed.dtype)) for m in modules])
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


def lens(model, out: Path, **kw):
    table = project_value_vectors(model, top_k=TOP_K, progress=False, **kw)
    table.write_text(out)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smol-openvla")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: big blocks go back to the OS when freed

    model = nnsight_vla.load(args.model)
    tower = get_tower(model)
    unembed = tower.unembedding()
    n = len(tower.layers)
    weights = [tower.value_vectors(i) for i in range(n)]
    modules = [tower.layers[i].mlp.down_proj._module for i in range(n)]
    batch = max(1, CHUNK_LOGITS // unembed.shape[0])
    all_vectors = torch.cat([w.T for w in weights])  # made before timing: the floor is matmuls only
    tmp = Path(tempfile.mkdtemp())
    variants = {
        "floor": lambda: floor(all_vectors, unembed, batch),
        "reference": lambda: reference(model, modules, unembed, tmp / "reference.txt"),
        "lens": lambda: lens(model, tmp / "lens.txt"),
    }
    times = {name: [] for name in variants}
    peaks = {name: [] for name in variants}
    results = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            results[name], seconds, peak = measured(fn)
            times[name].append(seconds)
            peaks[name].append(peak)

    vectors = n * weights[0].shape[1]
    print(
        f"{args.model}: {n} layers x {weights[0].shape[1]} value vectors = {vectors}, vocabulary "
        f"{unembed.shape[0]}, d_model {unembed.shape[1]}; torch threads {torch.get_num_threads()}; "
        f"lens chunk {batch} vectors; median of {args.rounds} rounds"
    )
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in variants:
        print(f"  {name:9s} {med[name]:7.2f} s   peak +{max(peaks[name]) / 2**20:7.1f} MiB")
    print(f"ratio lens/floor     = {med['lens'] / med['floor']:.3f}   (target <= 1.3)")
    print(f"ratio lens/reference = {med['lens'] / med['reference']:.3f}   (target < 1)")
    same = np.array_equal(results["lens"].ids.reshape(vectors, TOP_K), results["reference"])
    print(f"top-{TOP_K} ids identical (lens vs reference): {same}")

    print("lens peak memory by layers and chunk size (it should follow the chunk, not the layers):")
    for layers, size in [(3, batch), (n, batch), (n, 4 * batch), (n, batch // 4)]:
        run = partial(lens, model, tmp / "lens.txt", layers=range(layers), batch_size=size)
        _, seconds, peak = measured(run)
        mib = size * unembed.shape[0] * 4 / 2**20
        print(
            f"  {layers:3d} layers, chunk {size:5d} vectors ({mib:6.1f} MiB of logits): "
            f"peak +{peak / 2**20:7.1f} MiB, {seconds:6.2f} s"
        )
    table = results["lens"]
    counts = {}
    for word in (" up", " down", " left", " fast"):
        (token,) = model.tokenizer(word, add_special_tokens=False).input_ids
        counts[word] = int((table.ids[..., :3] == token).any(-1).sum())
    print(f"neurons with the token among their top 3: {counts}")


if __name__ == "__main__":
    main()
