"""Teaching smol-openvla's upper layers to follow motion instructions (low-rank adapters), on cached frozen-layer states."""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from nnsight_vla import InputError, Observation

from nnsight_vla_openvla.mini import FIRST_TRAINED, instructions, lora

from . import lora_train

RECIPES = ("act", "verbalise")
#: The layers trained (their q/k/v/o/gate/up through adapters); the 24 below stay SmolLM2's.


@dataclass(frozen=True)
class Settings:
    """What a training run does (everything it depends on, seeds included).

    ``recipe``: ``"act"`` (the 7 action tokens only) or ``"verbalise"`` (two words, the
    direction and the speed, then the action tokens; with probability ``counterfactual`` the
    words are another phrase and the actions follow the words, so they are what drives them).
    """

    recipe: str = "verbalise"
    steps: int = 300
    batch: int = 16
    lr: float = 3e-3
    rank: int = 16
    alpha: float = 32.0
    per_frame: int = 70
    counterfactual: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"recipe {self.recipe!r} is not one of {list(RECIPES)}.")


@dataclass
class Item:
    """One training sequence after the frozen layers: its states and what it is scored on."""

    states: torch.Tensor  # [T, d]: the input of the first trained layer at the text positions
    labels: torch.Tensor  # [T]: the next token at each position (-100: not scored)


def phrase_ids(tokenizer: Any, phrase: tuple[str, str]) -> list[int]:
    ids = tokenizer.encode(" " + " ".join(phrase), add_special_tokens=False)
    if len(ids) != 2:
        raise InputError(f"the phrase {phrase} is {len(ids)} tokens for this tokenizer, not 2.")
    return ids


def sequence(model: Any, example: instructions.Example, settings: Settings, rng: np.random.Generator
             ) -> tuple[list[int], list[int], list[bool]]:
    """(prompt ids, target ids, which targets are scored) for one example under the recipe."""
    prompt = model.processor.token_ids(example.instruction)
    phrase, action = example.phrase, np.asarray(example.action)
    words: list[int] = []
    scored_words = True
    if settings.recipe == "verbalise":
        if rng.random() < settings.counterfactual:
            others = [p for p in instructions.phrases() if p != tuple(phrase)]
            phrase = others[rng.integers(len(others))]
            action, scored_words = instructions.phrase_action(phrase), False  # the words are given
        words = phrase_ids(model.tokenizer, phrase)
    acts = [int(i) for i in model.action_tokenizer.encode(action)]
    return prompt, words + acts, [scored_words] * len(words) + [True] * len(acts)


def common_prefix(rows: list[list[int]]) -> int:
    n = min(map(len, rows))
    return next((i for i in range(n) if len({r[i] for r in rows}) > 1), n)


@torch.no_grad()
def frozen_states(model: Any, frame: np.ndarray, rows: list[list[int]], prefix_len: int,
                  layer: int = FIRST_TRAINED) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The input of ``layer`` for one frame: the shared prefix (BOS, patches, the prompt's common
    start) ``[P, d]`` once, and each row's remaining positions ``[T_i, d]`` (run on the prefix's cache)."""
    net, lm = model._module, model._module.language_model.model
    with _only_layers(lm, layer):
        return _frozen_states(model, net, lm, frame, rows, prefix_len)


@contextlib.contextmanager
def _only_layers(lm: Any, n: int) -> Iterator[None]:
    """Within the block the language model runs its first ``n`` layers only (the frozen ones) and
    returns their output as it is (no final norm): the input of layer ``n``."""
    layers, norm = lm.layers, lm.norm
    lm.layers, lm.norm = layers[:n], torch.nn.Identity()
    try:
        yield
    finally:
        lm.layers, lm.norm = layers, norm


def _frozen_states(model: Any, net: Any, lm: Any, frame: np.ndarray, rows: list[list[int]],
                   prefix_len: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    head = torch.tensor([rows[0][:prefix_len]])
    pixels = model.processor([Observation(frame, "x")])["pixel_values"]
    embeds, _, positions = net.embed(head, None, pixels)
    out = lm(inputs_embeds=embeds, position_ids=positions, use_cache=True)
    prefix, cache, P = out.last_hidden_state[0], out.past_key_values, embeds.shape[1]
    tails = [r[prefix_len:] for r in rows]
    width = max(map(len, tails))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails])  # right padding: causal, harmless
    batch = copy.deepcopy(cache)
    batch.batch_repeat_interleave(len(rows))
    pos = (P + torch.arange(width))[None].expand(len(rows), -1)
    states = lm(inputs_embeds=lm.embed_tokens(ids), position_ids=pos, past_key_values=batch).last_hidden_state
    return prefix, [states[i, : len(t)] for i, t in enumerate(tails)]


def upper_logits(model: Any, prefix: torch.Tensor, states: torch.Tensor, layer: int = FIRST_TRAINED,
                 where: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[B, T, vocab]`` of the layers from ``layer`` up, for ``B`` rows ``states``
    ``[B, T, d]`` after one shared ``prefix`` ``[P, d]`` (run once, its keys/values repeated);
    with a boolean ``where`` ``[B, T]``, only at those positions (``[n, vocab]``)."""
    lm = model._module.language_model.model
    P, (B, T, _) = prefix.shape[0], states.shape
    cache = DynamicCache()
    h = prefix[None]
    pos = torch.arange(P)[None]
    rot = lm.rotary_emb(h, pos)
    for block in lm.layers[layer:]:
        h = block(h, attention_mask=None, position_ids=pos, past_key_values=cache, use_cache=True,
                  position_embeddings=rot)
    cache.batch_repeat_interleave(B)
    pos = (P + torch.arange(T))[None].expand(B, -1)
    mask = torch.ones(T, P + T, dtype=torch.bool)
    mask[:, P:] = torch.tril(mask[:, P:])
    h = states
    rot = lm.rotary_emb(h, pos)
    for block in lm.layers[layer:]:
        h = block(h, attention_mask=mask[None, None], position_ids=pos, past_key_values=cache, use_cache=True,
                  position_embeddings=rot)
    h = lm.norm(h)
    return model._module.language_model.lm_head(h if where is None else h[where])


def build_items(model: Any, frames: np.ndarray, settings: Settings) -> list[tuple[torch.Tensor, list[Item]]]:
    """Per frame, the shared prefix states and ``per_frame`` class-balanced examples (a direction
    or "stay still", each 1/7 of the time), through the frozen layers."""
    rng = np.random.default_rng(settings.seed)
    pool = instructions.examples()
    by_class: dict[str, list] = {}
    for example in pool:
        by_class.setdefault(example.phrase[0], []).append(example)
    classes = sorted(by_class)
    out = []
    for frame in tqdm(frames, desc="frozen layers", unit="frame"):
        chosen = [by_class[c][rng.integers(len(by_class[c]))] for c in rng.choice(classes, settings.per_frame)]
        seqs = [sequence(model, e, settings, rng) for e in chosen]
        rows = [p + t for p, t, _ in seqs]
        prefix_len = min(common_prefix(rows), min(len(p) for p, _, _ in seqs) - 1)
        prefix, tails = frozen_states(model, frame, rows, prefix_len)
        items = []
        for (prompt, target, scored), states in zip(seqs, tails):
            labels = torch.full((states.shape[0],), -100)
            start = len(prompt) - 1 - prefix_len  # the position whose next token is the first target
            for k, (token, keep) in enumerate(zip(target, scored)):
                if keep:
                    labels[start + k] = token
            items.append(Item(states, labels))
        out.append((prefix, items))
    return out


def train(model: Any, frames: np.ndarray, settings: Settings) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adapters for layers ``FIRST_TRAINED..`` trained on ``frames``; returns them (bf16, scale
    folded in) and a log: wall times, examples per second, the loss curve."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    data = build_items(model, frames, settings)
    cached = time.perf_counter() - start
    net, n_layers = model._module, model.towers()["vlm"].n_layers
    paths = lora.target_paths(range(FIRST_TRAINED, n_layers))
    rng = np.random.default_rng(settings.seed + 1)
    losses = []
    with lora_train.adapted(net, paths, settings.rank, settings.alpha, settings.seed) as wrapped:
        params = [p for m in wrapped.values() for p in (m.A, m.B)]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps, pct_start=0.1)
        for step in (bar := tqdm(range(settings.steps), desc=f"train {settings.recipe}", unit="step")):
            prefix, items = data[step % len(data)]
            batch = [items[i] for i in rng.choice(len(items), settings.batch, replace=False)]
            width = max(i.states.shape[0] for i in batch)
            states = torch.zeros(len(batch), width, batch[0].states.shape[1])
            labels = torch.full((len(batch), width), -100)
            for row, item in enumerate(batch):
                states[row, : item.states.shape[0]], labels[row, : item.labels.shape[0]] = item.states, item.labels
            scored = labels != -100  # the vocabulary-wide logits only where a token is scored
            logits = upper_logits(model, prefix, states, where=scored)
            loss = torch.nn.functional.cross_entropy(logits, labels[scored])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        adapters = lora_train.state(wrapped)
    total = time.perf_counter() - start
    examples = settings.steps * settings.batch
    log = {"settings": asdict(settings), "seconds_frozen_layers": cached, "seconds_total": total,
           "examples_per_second": examples / (total - cached), "loss": losses, "frames": len(frames)}
    return adapters, log
