"""``tiny-pi0_fast``'s weights: lerobot's seeded random policy, fitted to emit `fast_task`'s chunks.

The fit is teacher forcing on the FAST sequences lerobot's own preprocessor writes for the
task's chunks (``BOS Action : ▁ <two FAST tokens> | EOS``), in the attention layout lerobot's
greedy decoder uses (the prompt and BOS one bidirectional prefix, the rest causal), so what is
fitted is what runs. Each step draws fresh task observations (one per level triple), so the
rule is learnt rather than the noise of a few images. Only the rows of the output head for the
tokens those sequences use are fitted; the cross-entropy counts every other row as one term of
logit 0 (their seeded logits are near 0), so each target has to win against the whole
vocabulary. The embedding and the other head rows keep their seeded values.

The fit takes 400 steps on one thread (about a minute), so its tensors (0.7 MB) ship with the
package (``data/tiny_pi0_fast_fit.safetensors``, rewritten by ``python -m
nnsight_vla_lerobot.fast_fit``) and are found in a cache otherwise. Both are keyed by a hash of
everything that determines the fit: the code of this module and of `fast_task` (docstrings and
comments aside), torch's and lerobot's versions, the seeded weights it starts from and its first
batch of data. A file is read only if its key and content digest match and its tensors match the
policy strictly by name and shape; without one, the fit runs and is cached in
``$NNSIGHT_VLA_HOME/fits`` (default ``~/.cache/nnsight-vla/fits``), written atomically under a
lock (pytest-xdist workers building at once fit once). A fit is written only once greedy
decoding emits exactly the FAST sequences of 108 fresh task observations (4 of each level
triple); every build then decodes 9 more (`QUICK`): weights that do not act are a `SetupError`,
never a random model.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from lerobot.policies.common.vla_utils import prepare_attention_masks_4d
from lerobot.utils.constants import ACTION_TOKEN_MASK, ACTION_TOKENS, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

from nnsight_vla.family import SetupError, cache

from . import fast_task
from .inputs import to_batch

STEPS, LR = 400, 3e-3  # Adam, the rate decaying to 0 along a cosine
SEED, PROBE_SEED = 0, 1  # step i draws task samples with seed (SEED, i); the check with (PROBE_SEED,)
HEAD = "model.paligemma_with_expert.paligemma.lm_head.weight"
EMBED = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
ROWS, IDS = "lm_head.rows", "lm_head.ids"  # the fitted head rows and their token ids, in the file
SHIPPED = Path(__file__).parent / "data" / "tiny_pi0_fast_fit.safetensors"
#: What every build decodes: 9 triples, each image level with each instruction, state levels
#: balanced (a fit is checked on all 27 triples, 4 observations each, before it is written).
QUICK = tuple((image, instruction, (image + instruction) % 3) for image in range(3) for instruction in range(3))


def fit_dir() -> Path:
    """Where fitted tiny weights are cached: ``$NNSIGHT_VLA_HOME/fits``, else ``~/.cache/nnsight-vla/fits``."""
    return cache.cache_dir("fits")


def task_batch(preprocessor: Any, cameras: tuple[str, ...], state_dim: int, per_combination: int,
               seed: Sequence[int], triples: Sequence[tuple[int, int, int]] | None = None) -> dict[str, torch.Tensor]:
    """A batch of `fast_task` samples put through lerobot's preprocessor.

    The samples' chunks go in as (un-normalised) actions: the batch holds the prompt tokens and
    the FAST sequences lerobot writes.
    """
    pairs = fast_task.samples(per_combination, seed, triples)
    raw = to_batch([obs for obs, _ in pairs], cameras, state_dim)
    stats = fast_task.TINY_STATS["action"]
    chunks = torch.tensor(np.stack([chunk for _, chunk in pairs]), dtype=torch.float32)
    raw["action"] = stats["mean"] + stats["std"] * chunks
    batch = dict(preprocessor(raw))
    length = int(batch[ACTION_TOKEN_MASK].sum(1).max())  # lerobot pads to max_action_tokens
    batch[ACTION_TOKENS], batch[ACTION_TOKEN_MASK] = batch[ACTION_TOKENS][:, :length], batch[ACTION_TOKEN_MASK][:, :length]
    return batch


def _hidden(policy: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The final hidden states that predict each FAST sequence's tokens after its BOS.

    The prompt and BOS are the decoder's bidirectional prefix, the other tokens causal after it.
    """
    model, sequence, mask = policy.model, batch[ACTION_TOKENS], batch[ACTION_TOKEN_MASK]
    images, image_masks = policy._preprocess_images(batch)
    tokens = torch.cat([batch[OBS_LANGUAGE_TOKENS], sequence[:, :1]], dim=1)
    masks = torch.cat([batch[OBS_LANGUAGE_ATTENTION_MASK], mask[:, :1]], dim=1)
    embeds, pad_masks, att_masks, _, _ = model.embed_prefix_fast(
        images, image_masks, tokens, masks, fast_action_tokens=sequence[:, 1:-1], fast_action_masks=mask[:, 1:-1])
    (out, _), _ = model.paligemma_with_expert.forward(
        attention_mask=prepare_attention_masks_4d(att_masks, dtype=embeds.dtype),
        position_ids=torch.cumsum(pad_masks, dim=1) - 1, past_key_values=None, inputs_embeds=[embeds, None],
        use_cache=False, adarms_cond=[None, None])
    return out[:, -(sequence.shape[1] - 1):]


def _loss(policy: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor, ids: torch.Tensor,
          vocab: int) -> torch.Tensor:
    """Cross-entropy over the whole vocabulary, with every row but ``ids`` taken as logit 0."""
    logits = _hidden(policy, batch) @ rows.T
    others = logits.new_full((*logits.shape[:2], 1), float(np.log(vocab - len(ids))))
    targets = torch.searchsorted(ids, batch[ACTION_TOKENS][:, 1:].contiguous())
    losses = torch.nn.functional.cross_entropy(torch.cat([logits, others], -1).flatten(0, 1), targets.flatten(),
                                               reduction="none")
    mask = batch[ACTION_TOKEN_MASK][:, 1:].flatten().float()
    return (losses * mask).sum() / mask.sum()


def _fitted_names(policy: torch.nn.Module) -> list[str]:
    return [name for name, _ in policy.named_parameters() if name not in (HEAD, EMBED)]


def _fit(policy: torch.nn.Module, draw: Callable[[int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Fit ``policy`` in place on ``draw(step)``'s batches.

    Returns the fitted tensors by name, plus the head rows and their ids.
    """
    first = draw(0)
    ids = torch.unique(first[ACTION_TOKENS][:, 1:][first[ACTION_TOKEN_MASK][:, 1:]])
    head = policy.get_parameter(HEAD)
    rows = torch.nn.Parameter(head.detach()[ids].clone())
    params = dict(policy.named_parameters())
    names = _fitted_names(policy)
    wanted = {name: p.requires_grad for name, p in params.items()}
    for name in (HEAD, EMBED):
        params[name].requires_grad_(False)
    optimizer = torch.optim.Adam([*(params[name] for name in names), rows], lr=LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=[]), _one_thread():
            torch.manual_seed(SEED)
            for step in range(STEPS):
                loss = _loss(policy, first if step == 0 else draw(step), rows, ids, head.shape[0])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    finally:
        for name, p in params.items():
            p.requires_grad_(wanted[name])
    with torch.no_grad():
        head[ids] = rows.detach()
    return {**{name: params[name].detach().clone() for name in names}, ROWS: rows.detach().clone(), IDS: ids}


def _apply(policy: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for name in _fitted_names(policy):
            params[name].copy_(tensors[name])
        params[HEAD][tensors[IDS]] = tensors[ROWS]


def _code(module: Any) -> str:
    """A module's code without its docstrings and comments (its syntax tree)."""
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:]
    return ast.dump(tree)


def key(policy: torch.nn.Module, first: dict[str, torch.Tensor]) -> str:
    """A hash of what determines the fit of the seeded ``policy`` whose first batch is ``first``."""
    import lerobot

    sha = hashlib.sha256()
    for module in (sys.modules[__name__], fast_task):
        sha.update(_code(module).encode())
    sha.update(f"torch {torch.__version__} lerobot {lerobot.__version__}".encode())
    params = dict(policy.named_parameters())
    sha.update(cache.digest({name: params[name] for name in _fitted_names(policy)}).encode())
    sha.update(cache.digest({k: v for k, v in first.items() if isinstance(v, torch.Tensor)}).encode())
    return sha.hexdigest()


def read(path: Path, key: str, policy: torch.nn.Module) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The fit in ``path`` if it is usable for ``key`` and ``policy``, else None; and why not."""
    tensors, _, why = cache.read(path, key)
    if tensors is None:
        return None, why
    params = dict(policy.named_parameters())
    expected = {name: tuple(params[name].shape) for name in _fitted_names(policy)}
    if {k: tuple(v.shape) for k, v in tensors.items() if k not in (ROWS, IDS)} != expected \
            or ROWS not in tensors or IDS not in tensors or tensors[ROWS].shape != (len(tensors[IDS]), params[HEAD].shape[1]):
        return None, "not the policy's tensors by name and shape"
    return tensors, "usable"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread inside the block.

    The fit's matrices are small (more threads only wait on each other, badly so on a busy
    machine), and one thread sums in one order.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _draws(preprocessor: Any, cameras: tuple[str, ...], state_dim: int) -> Callable[[int], dict[str, torch.Tensor]]:
    return lambda step: task_batch(preprocessor, cameras, state_dim, 1, (SEED, step))


def fit_tiny(policy: torch.nn.Module, preprocessor: Any, cameras: tuple[str, ...], state_dim: int) -> str:
    """Give the freshly seeded tiny policy its fitted weights, then `check` that it acts.

    The weights are the shipped ones, the cached ones, or fitted now (then checked and cached).
    Returns where they came from.
    """
    draw = _draws(preprocessor, cameras, state_dim)
    wanted = key(policy, draw(0))
    tensors, why = read(SHIPPED, wanted, policy)
    source = "shipped"
    if tensors is None:
        warnings.warn(f"the shipped tiny-pi0_fast fit {SHIPPED} is {why}; using the cache or fitting "
                      "(about a minute). Rewrite it with `python -m nnsight_vla_lerobot.fast_fit`.", stacklevel=3)
        path = fit_dir() / f"tiny-pi0_fast-{wanted[:16]}.safetensors"
        with cache.locked(path, "the tiny-pi0_fast fit") as writable:
            tensors, why = read(path, wanted, policy) if writable else (None, "absent")
            source = str(path)
            if tensors is None:
                if why != "absent":
                    warnings.warn(f"the cached fit {path} is {why}; fitting again.", stacklevel=3)
                tensors, source = _fit(policy, draw), "fitted"
                check(policy, preprocessor, cameras, state_dim, fast_task.combinations(), 4)
                if writable:
                    cache.write(path, wanted, tensors)
    if source != "fitted":
        _apply(policy, tensors)
        check(policy, preprocessor, cameras, state_dim)
    return source


def check(policy: Any, preprocessor: Any, cameras: tuple[str, ...], state_dim: int,
          triples: Sequence[tuple[int, int, int]] = QUICK, per_combination: int = 1) -> None:
    """Check that greedy decoding of fresh observations of ``triples`` emits their FAST tokens.

    Each observation must get exactly the FAST sequence lerobot writes for its chunk, else a
    `SetupError`.
    """
    batch = task_batch(preprocessor, cameras, state_dim, per_combination, (PROBE_SEED,), triples)
    model, sequence, mask = policy.model, batch[ACTION_TOKENS], batch[ACTION_TOKEN_MASK]
    with torch.no_grad(), _one_thread():
        images, image_masks = policy._preprocess_images(batch)
        emitted = model.sample_actions_fast_kv_cache(
            images, image_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK],
            max_decoding_steps=policy.config.max_decoding_steps)
    bar = model._paligemma_tokenizer.convert_tokens_to_ids("|")
    wrong = set()
    for row, (want, keep) in enumerate(zip(sequence[:, 1:], mask[:, 1:])):
        want = want[keep].tolist()
        want = want[:want.index(bar) + 1]
        if emitted[row, :len(want)].tolist() != want:
            wrong.add(tuple(triples[row % len(triples)]))
    if wrong:
        raise SetupError(
            f"tiny-pi0_fast's fitted weights do not emit the task's FAST sequences for level triples "
            f"{sorted(wrong)} (of {len(triples)}); delete {fit_dir()} to refit, and report it if it persists."
        )


def main() -> None:
    """Fit the tiny policy from its seeded weights and ship the result (``SHIPPED``)."""
    import nnsight_vla

    model = nnsight_vla.load("tiny-pi0_fast", dispatch=False)
    policy = model._build()  # outside nnsight's meta build: the seeded policy on the CPU
    draw = _draws(model.preprocessor, model.cameras, model.spec.state_dim)
    wanted = key(policy, draw(0))
    tensors = _fit(policy, draw)
    check(policy, model.preprocessor, model.cameras, model.spec.state_dim, fast_task.combinations(), 4)
    cache.write(SHIPPED, wanted, tensors)
    print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.2f} MB, key {wanted[:16]})")


if __name__ == "__main__":
    main()
