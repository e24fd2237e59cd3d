"""`OpenVLA`: the OpenVLA family as an nnsight model (its own modeling code, official layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnsight_vla.family import (
    DEFAULT_CAMERA as CAMERA, VLA, BridgePart, CheckpointError, InputError, Layout, ModelSpec, Observation,
    TowerLayout, config_folder, load_module, read_state_dict, weights_folder,
)

from . import SMOL, TINY, mini, smol, tiny
from .actions import ActionTokenizer, normalize, select_stats, unnormalize
from .checkpoint import EMBED, LM_HEAD, from_checkpoint_key, read_tokenizer, save_checkpoint
from .config import OpenVLAConfig
from .modeling import OpenVLANet
from .processor import OpenVLAProcessor

def check_observation(obs: Observation) -> None:
    """Check that ``obs`` is what OpenVLA sees: one camera, named ``"image"``, and no proprio state.

    ``"image"`` is what ``Observation(image, instruction)`` names an unnamed image. Anything else
    is refused (an `InputError`) rather than dropped.
    """
    if list(obs.images) != [CAMERA]:
        raise InputError(
            f"OpenVLA takes exactly one camera, {CAMERA!r} (the third-person view it was trained "
            f"on), got {list(obs.images)}; pass Observation(image, instruction) or "
            f"Observation({{{CAMERA!r}: image}}, instruction) with that one view."
        )
    if obs.state is not None:
        raise InputError(
            f"OpenVLA takes no proprio state (got one of shape {tuple(obs.state.shape)}): its actions "
            "come from the image and the instruction alone; drop state=."
        )


#: The name of OpenVLA's ``config.json`` architecture, under which its TransformerLens adapter is registered.
ARCHITECTURE = "OpenVLAForActionPrediction"


def _action_dim(norm_stats: dict, unnorm_key: str | None) -> int:
    """Action size from the statistics: the chosen dataset's, or the one all datasets share."""
    if unnorm_key is not None:
        return len(select_stats(norm_stats, unnorm_key)[1]["q01"])
    sizes = {len(stats["action"]["q01"]) for stats in norm_stats.values() if "action" in stats}
    if len(sizes) != 1:
        raise CheckpointError(
            f"the checkpoint's datasets {sorted(norm_stats)} disagree on the action size ({sorted(sizes)}) "
            "or give none; pass unnorm_key= to choose one."
        )
    return sizes.pop()


class OpenVLA(VLA):
    """OpenVLA (Kim et al. 2024): DINOv2 + SigLIP vision, GELU projector, Llama-2 decoder.

    Options: ``unnorm_key`` (which dataset's statistics un-normalise actions; required when
    the checkpoint has several) and ``center_crop`` (the 0.9-area crop that the LIBERO
    fine-tunes need). Inputs: one camera, ``"image"``, and no state (`check_observation`);
    ``predict_action(obs, unnorm_key=None, seed=None)`` accepts ``seed`` like every family,
    without effect (decoding is greedy). Built-ins: ``tiny-openvla`` (random), ``smol-openvla``
    (SmolLM2-135M) and ``mini-openvla`` / ``mini-openvla-act`` (smol-openvla taught to follow
    motion instructions; option ``adapters``: another adapter file than the shipped one). A
    verbalising model (``mini-openvla``: ``config.phrases`` is set) says a few words before its
    actions: ``say_and_act(obs)`` returns them with the actions, ``phrase="up fast"`` makes it
    say those instead.

    Example:
        >>> model = nnsight_vla.load("openvla/openvla-7b-finetuned-libero-10",
        ...                          dtype="bfloat16", device="cuda", center_crop=True)
        >>> model.predict_action(obs)
        array([...])
    """

    layout = Layout(
        towers=(TowerLayout(
            "vlm", "language_model.model.layers", "language_model.model.norm",
            unembed="language_model.lm_head", embed="language_model.model.embed_tokens",
            root="language_model.model",
        ),),
        modules={"vision_backbone": "vision", "projector": "projector"},
        run_start="vision_backbone",  # the prefill; each decoding step after it reuses the cache
        bridges={"vlm": BridgePart("language_model", ARCHITECTURE)},  # the adapter in tl_adapter.py
    )
    capabilities = frozenset({"action_bins"})
    _persistent_attributes = ("_tokenizer", "processor", "action_tokenizer", "config")  # config: norm statistics

    def _configure(self, source: str, unnorm_key: str | None = None, center_crop: bool = False,
                   adapters: str | None = None) -> None:
        self.builtin = source if source in (TINY, SMOL, *mini.BUILTINS) else None
        if adapters is not None and source not in mini.BUILTINS:
            raise InputError(f"adapters= is for the mini-openvla built-ins {sorted(mini.BUILTINS)}, not {source!r}.")
        self.adapters = mini.adapter_file(source) if adapters is None and source in mini.BUILTINS else adapters
        if source == TINY:
            self.folder = None
            self.config = tiny.tiny_config()
            self._tokenizer = tiny.build_tiny_tokenizer()
            self.processor = OpenVLAProcessor(self._tokenizer, center_crop=center_crop)
        elif source == SMOL or source in mini.BUILTINS:
            self.folder = None
            self.config = smol.smol_config() if source == SMOL else mini.configure(smol.smol_config(), source)
            # One read of the GGUF file gives the tokenizer and the weights; the weights wait here
            # for `_load_weights` (a lazy build drops them and dispatch reads the file again).
            self._tokenizer, self._gguf_tensors = smol.read_gguf(self.config)
            self.processor = OpenVLAProcessor(self._tokenizer, center_crop=center_crop)
        else:
            self.folder, self.revision = config_folder(source, self.revision)
            self.config = OpenVLAConfig.from_folder(self.folder)
            self._tokenizer = read_tokenizer(self.folder)
            self.processor = OpenVLAProcessor.from_folder(self.folder, self._tokenizer, center_crop)
        config = self.config
        config.check_action_ids(self.builtin or str(self.folder / "config.json"))
        self.action_tokenizer = ActionTokenizer(config.tokenizer_vocab_size, config.n_action_bins)
        self.unnorm_key = None if unnorm_key is None else select_stats(config.norm_stats, unnorm_key)[0]
        action_dim = _action_dim(config.norm_stats, self.unnorm_key)
        llama = config.llama
        self.spec = ModelSpec(
            family="openvla",
            n_layers=llama.num_hidden_layers,
            d_model=llama.hidden_size,
            d_mlp=llama.intermediate_size,
            vocab_size=llama.vocab_size,
            action_token_ids=self.action_tokenizer.token_ids,
            action_dim=action_dim,
        )

    def _build(self) -> torch.nn.Module:
        if self.builtin == TINY:
            return tiny.random_net(self.config)
        self.__dict__.pop("_gguf_tensors", None)  # a lazy build holds no weights
        return OpenVLANet(self.config)

    def _load_weights(self) -> torch.nn.Module:
        if self.builtin == TINY:
            return self._build()
        if self.builtin is not None:  # smol-openvla, or it with a mini-openvla's adapters merged in
            language = self.__dict__.pop("_gguf_tensors", None) or smol.read_gguf(self.config)[1]
            tensors = {**smol.random_parts(self.config), **language}
            if self.builtin in mini.BUILTINS:
                tensors = mini.with_adapters(tensors, self.adapters, self.config.llama.num_hidden_layers)
            where = f"{self.builtin} ({smol.GGUF_FILE})"
        else:
            weights = read_state_dict(weights_folder(self.name_or_path, self.revision))
            tensors = {from_checkpoint_key(k): v for k, v in weights.items()}
            where = str(self.folder)
        tied = self.config.llama.tie_word_embeddings
        if tied and EMBED in tensors:
            tensors.setdefault(LM_HEAD, tensors[EMBED])  # tied weights are stored once
        net = load_module(lambda: OpenVLANet(self.config), tensors, where)
        if tied:
            net.language_model.lm_head.weight = net.language_model.model.embed_tokens.weight
        return net

    def _inputs(self, observations: list) -> dict[str, torch.Tensor]:
        for obs in observations:
            check_observation(obs)
        return self.processor(observations)

    def token_strings(self, token_ids) -> list[str]:
        """Token labels; action tokens read ``[action: x]`` with x the bin centre in [-1, 1]."""
        ids = [int(i) for i in token_ids]
        actions = self.action_tokenizer.token_ids
        labels = super().token_strings(ids)
        centers = self.action_tokenizer.decode(np.array(ids))
        return [f"[action: {c:.3f}]" if i in actions else s for i, s, c in zip(ids, labels, centers)]

    def decode_actions(self, token_ids: np.ndarray, unnorm_key: str | None = None) -> np.ndarray:
        """Un-normalised actions from generated action-token ids."""
        _, stats = select_stats(self.config.norm_stats, unnorm_key or self.unnorm_key)
        return unnormalize(self.action_tokenizer.decode(token_ids), stats)

    def action_bins(self, actions: np.ndarray, unnorm_key: str | None = None) -> np.ndarray:
        """The bin (0..254) ``predict_action`` would decode for each dimension of ``actions``.

        Each is the bin whose centre it would decode: the un-normalised ``actions`` are normalised
        with the statistics' q01/q99, then binned.
        """
        _, stats = select_stats(self.config.norm_stats, unnorm_key or self.unnorm_key)
        ids = self.action_tokenizer.encode(normalize(np.asarray(actions, np.float64), stats))
        return np.clip(self.action_tokenizer.vocab_size - ids - 1, 0, self.action_tokenizer.n_bins - 2)

    def _predict_action(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        unnorm_key: str | None = None,
        seed: int | None = None,
        phrase: str | None = None,
        _say: bool = False,
        **unknown: Any,
    ) -> np.ndarray | tuple[Any, np.ndarray]:
        # ``seed`` is accepted so that code written for every family (the LIBERO recipes, Pi0's
        # seeded noise) runs unchanged; greedy decoding draws nothing, so it changes nothing.
        if unknown:
            raise InputError(
                f"OpenVLA's predict_action has no option {', '.join(map(repr, sorted(unknown)))}; it takes "
                "unnorm_key= (which dataset's statistics), seed= (accepted, no effect: decoding is greedy) "
                "and, on a verbalising model, phrase= (the words to say instead of its own; say_and_act() "
                "returns the words said too)."
            )
        # Check the statistics before spending a forward pass.
        _, stats = select_stats(self.config.norm_stats, unnorm_key or self.unnorm_key)
        n_words, n_tokens = self._words_before_actions, len(stats["q01"])
        forced = None if phrase is None else self._phrase_ids(phrase).expand(input_ids.shape[0], -1)
        net = self._module
        with torch.no_grad():
            out = net(input_ids, attention_mask, pixel_values, use_cache=True, logits_to_keep=1)
            mask = net.multimodal_mask(attention_mask)
            tokens = []
            for step in range(n_words + n_tokens):  # greedy, as the reference generate(do_sample=False)
                token = out.logits[:, -1].argmax(-1) if forced is None or step >= n_words else forced[:, step]
                tokens.append(token)
                if step + 1 < n_words + n_tokens:
                    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                    out = net(token[:, None], mask, past_key_values=out.past_key_values,
                              use_cache=True, logits_to_keep=1)
        ids = torch.stack(tokens, dim=1).cpu().numpy()
        actions = self.decode_actions(ids[:, n_words:], unnorm_key)
        actions = actions[0] if actions.shape[0] == 1 else actions
        if not _say:
            return actions
        said = [self._tokenizer.decode(row).strip() for row in ids[:, :n_words]]
        return said[0] if len(said) == 1 else said, actions

    def say_and_act(self, observations: Any, phrase: str | None = None, **options: Any) -> tuple[Any, np.ndarray]:
        """``(words, actions)`` of a verbalising model (``mini-openvla``), from one prediction.

        The words are what it says before its actions (one observation: a str; a batch: a list).
        ``phrase=`` makes it say those words instead (one it learned). Steering applies as to
        `predict_action` (``with model.steer(...)``).

        Example:
            >>> words, action = mini.say_and_act(Observation(frame, "move up quickly"))
            >>> words
            'up fast'
        """
        if self.config.phrases is None:
            raise InputError(f"{self.name_or_path} says nothing before its actions; use predict_action().")
        return self.predict_action(observations, phrase=phrase, _say=True, **options)

    @property
    def _words_before_actions(self) -> int:
        """How many tokens a verbalising model says before its action tokens (0: OpenVLA's none)."""
        return 0 if self.config.phrases is None else self.config.phrases.n_tokens

    def _phrase_ids(self, phrase: str) -> torch.Tensor:
        """``[1, n]``: the ids of the words a verbalising model is made to say."""
        if self.config.phrases is None:
            raise InputError(f"phrase={phrase!r}: this model says nothing before its actions; drop phrase=.")
        return self.config.phrases.ids(self._tokenizer, phrase)

    def bridge_inputs(self, part: str, observations: list) -> dict[str, torch.Tensor]:
        """The Llama's inputs in the prefill: token embeddings with the patches after BOS."""
        embeds, mask, positions = self._module.embed(**self._inputs(observations))
        return {"input": embeds, "attention_mask": mask, "position_ids": positions}

    def bridge_tokens(self, part: str, observations: list) -> Any:
        """One prompt's ids with pad ids where the patches go (after BOS); the mask is causal."""
        from nnsight_vla.family import TokenPrompt

        if len(observations) != 1:
            raise InputError(f"token inputs are for one observation, got {len(observations)}.")
        inputs = self._inputs(observations)
        ids, n = inputs["input_ids"], self._module.num_patches
        placeholders = ids.new_full((1, n), self._tokenizer.pad_token_id)
        embeds, _, _ = self._module.embed(**inputs)
        tokens = torch.cat([ids[:, :1], placeholders, ids[:, 1:]], dim=1)
        return TokenPrompt(tokens, slice(1, 1 + n), embeds[:, 1 : 1 + n])

    def action_calls(self, tower: str) -> range | None:
        """One greedy decoding forward per action dimension, after a verbalising model's phrase.

        OpenVLA has no phrase: its first is the prefill. Other towers have none.
        """
        n = self._words_before_actions
        return range(n, n + self.spec.action_dim) if tower == "vlm" else None

    def calls_per_prediction(self, tower: str) -> int | None:
        """The VLM's forwards: one per phrase token, then one per action dimension; else None."""
        return self._words_before_actions + self.spec.action_dim if tower == "vlm" else None

    def _save(self, folder: Path, max_shard_bytes: int = 5 * 2**30) -> None:
        save_checkpoint(folder, self.config, self._module, self._tokenizer, self.processor, max_shard_bytes)
