"""Pi0-FAST (lerobot's ``pi0_fast``): PaliGemma decoding FAST action tokens, as data, and its model class `Pi0Fast`."""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.policies.pi0_fast import PI0FastConfig, PI0FastPolicy, make_pi0_fast_pre_post_processors
from lerobot.policies.pi0_fast import modeling_pi0_fast, processor_pi0_fast
from lerobot.processor import tokenizer_processor

from nnsight_vla.family import Layout, ModelSpec, TowerLayout, VLAError, build_word_tokenizer

from . import fast_fit, fast_task, sizing
from .kind import PolicyKind
from .pi0 import TINY_SIZES, resize_paligemma
from .policy import LeRobotVLA

PALI = "model.paligemma_with_expert.paligemma"
LM = f"{PALI}.model.language_model"
#: PaliGemma's full vocabulary: a random tiny model can emit any id, so its tokenizer covers all.
VOCAB = 257152
#: Where a checkpoint keeps its FAST tokenizer (this project's layout; lerobot reads it by name).
ACTION_TOKENIZER_DIR = "action_tokenizer"

LAYOUT = Layout(
    (TowerLayout("vlm", f"{LM}.layers", f"{LM}.norm", unembed=f"{PALI}.lm_head", embed=f"{LM}.embed_tokens", root=LM),),
    {f"{PALI}.model.vision_tower": "vision", f"{PALI}.model.multi_modal_projector": "projector"},
    run_start=f"{PALI}.model.vision_tower",  # the images are embedded once, in the prefill
)


PI0_FAST = PolicyKind(
    "pi0_fast", PI0FastConfig, PI0FastPolicy, make_pi0_fast_pre_post_processors, modeling_pi0_fast,
    processor_pi0_fast, LAYOUT, tokenizer_name="google/paligemma-3b-pt-224", tokenizer_label="PaliGemma",
    spec_extra=("max_decoding_steps", "fast_skip_tokens"), tiny_sizes=TINY_SIZES,
    # 6 decoding steps: "Action", ":", "▁", the two FAST tokens of each taught chunk (`fast_task`), "|"
    tiny_options={"image_resolution": (64, 64), "max_decoding_steps": 6, "tokenizer_max_length": 48,
                  "validate_action_token_prefix": False},
)


@functools.lru_cache(maxsize=1)
def tiny_text_tokenizer() -> Any:
    """A tokenizer of English words with Gemma's special-token layout and "|" (FAST's terminator).

    It is padded with reserved pieces to PaliGemma's 257,152 ids (built once per process, ~6 s).
    Like Gemma's, it adds no dummy prefix: "|" is one piece, "Action: " is ``Action, :, ▁``.
    """
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "|"]
    named = dict(bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", dummy_prefix=False)
    words = len(build_word_tokenizer(specials, **named))
    return build_word_tokenizer(specials, **named, n_reserved=VOCAB - words)


@functools.lru_cache(maxsize=4)
def _with_special_tokens(tokenizer: Any, add_bos_token: bool, add_eos_token: bool) -> Any:
    """A copy of ``tokenizer`` that adds BOS / EOS as asked (kept: one copy per tokenizer and flags)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_bos_token, tokenizer.add_eos_token = add_bos_token, add_eos_token
    return tokenizer


class _AsAsked(sizing.Given):
    """The text tokenizer, standing in for PaliGemma's wherever lerobot loads it by name.

    Lerobot's FAST steps ask for ``add_bos_token=False, add_eos_token=True`` (a sequence ends
    "| EOS").
    """

    def from_pretrained(self, *args: Any, add_bos_token: bool | None = None, add_eos_token: bool | None = None,
                        **kwargs: Any) -> Any:
        if add_bos_token is None and add_eos_token is None:
            return self.value
        return _with_special_tokens(self.value, bool(add_bos_token), bool(add_eos_token))


def tiny_action_tokenizer(time_horizon: int = 10, action_dim: int = 7, seed: int = 0) -> Any:
    """A FAST tokenizer (DCT, rounding, byte-level BPE) fitted on synthetic action chunks.

    It is lerobot's own implementation, fitted on smooth synthetic chunks, random walks of
    ``time_horizon`` steps in ``action_dim`` dimensions, and once on each chunk the tiny policy is
    taught (`fast_task`), as FAST tokenizers are fitted on a data set's actions: each of those
    encodes to two tokens. The taught chunks join only when their shape is
    ``(time_horizon, action_dim)``.
    """
    from lerobot.policies.molmoact2.molmoact2_hf_model.action_tokenizer import UniversalActionProcessor

    rng = np.random.default_rng(seed)
    chunks = [np.cumsum(rng.normal(0, 0.1, (time_horizon, action_dim)), axis=0) for _ in range(200)]
    if (time_horizon, action_dim) == (fast_task.CHUNK, fast_task.ACTION_DIM):
        chunks += [fast_task.chunk(*levels) for levels in fast_task.combinations()]
    return UniversalActionProcessor.fit(chunks, scale=10, vocab_size=1024, time_horizon=time_horizon,
                                        action_dim=action_dim)


class FastDecodingWarning(UserWarning):
    """Generated tokens that are not a FAST sequence were decoded to the mean action."""


class FastDecodingError(VLAError, RuntimeError):
    """Generated tokens that lerobot refuses to decode (no "Action:" prefix)."""


class Pi0Fast(LeRobotVLA):
    """Pi0-FAST (Physical Intelligence's π0-FAST, as ported by lerobot 0.6.1).

    PaliGemma reads the cameras, the instruction and the discretised state, then decodes the action
    chunk as FAST tokens (a DCT over time, rounded, byte-level BPE), one forward per token.

    FAST token ``t`` is PaliGemma id ``vocab_size - 1 - fast_skip_tokens - t``; `token_strings`
    labels those ids ``[FAST t]``. Every forward of ``layers`` emits a token: the prefill the
    first, so ``calls="prefill"`` steers the first forward only, the paper's rule for π0-FAST.

    Example:
        >>> model = nnsight_vla.load("tiny-pi0_fast")
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:3]:                      # the first three tokens
        ...         token = model.lm_head.output[0, -1].argmax().save()
    """

    kinds = {"pi0_fast": PI0_FAST}
    _options = {"seed": "the sampling seed when the config's temperature > 0; greedy decoding ignores it"}
    _persistent_attributes = (*LeRobotVLA._persistent_attributes, "action_tokenizer")

    def action_calls(self, tower: str) -> range | None:
        """Every forward of the VLM emits a token; other towers have no action calls.

        The prefill emits the first, each decoding step the next (at most ``max_decoding_steps``;
        greedy decoding stops early at the "|" terminator).
        """
        return range(self.policy_config.max_decoding_steps) if tower == "vlm" else None

    def _resize(self, sizes: Any) -> dict[str, Any]:
        """Pi0's resizing (Gemma widths, SigLIP) with the vision tower at the tiny images' size."""
        return resize_paligemma(self.kind.modeling, {**sizes, "vision": {**sizes["vision"], "image_size": 64}})

    def _tiny_tokenizer(self) -> Any:
        return tiny_text_tokenizer()

    def _configure_parts(self) -> None:
        config = self.policy_config
        if self.folder is None:
            self.action_tokenizer = tiny_action_tokenizer(config.n_action_steps, config.output_features["action"].shape[0])
            return
        from lerobot.policies.molmoact2.molmoact2_hf_model.action_tokenizer import UniversalActionProcessor

        self.action_tokenizer = self._read_part(ACTION_TOKENIZER_DIR, config.action_tokenizer_name,
                                                UniversalActionProcessor.from_pretrained_local, "FAST tokenizer")

    def _local_parts(self) -> contextlib.AbstractContextManager:
        """lerobot's policy and processors fetch both tokenizers by name: they get ours."""
        stack = contextlib.ExitStack()
        given = {"AutoProcessor": sizing.Given(self.action_tokenizer), "AutoTokenizer": _AsAsked(self._tokenizer)}
        stack.enter_context(sizing.replaced(modeling_pi0_fast, given))
        stack.enter_context(sizing.replaced(tokenizer_processor, given))
        return stack

    def _load_weights(self) -> torch.nn.Module:
        """A checkpoint's weights; the built-in's seeded weights fitted to `fast_task` (`fast_fit`).

        The built-in's are fitted in float32 (what the fit is keyed by), then cast as lerobot casts
        for the config's dtype.
        """
        if self.folder is not None:
            return super()._load_weights()
        dtype, self.policy_config.dtype = self.policy_config.dtype, "float32"
        try:
            policy = super()._load_weights()
        finally:
            self.policy_config.dtype = dtype
        fast_fit.fit_tiny(policy, self.preprocessor, self.cameras, self.spec.state_dim)
        policy.config.dtype = dtype
        policy.model.paligemma_with_expert.to_bfloat16_for_selected_params(dtype)
        return policy

    def _spec(self) -> ModelSpec:
        return replace(super()._spec(), action_token_ids=self.fast_token_ids())

    def fast_token_ids(self) -> range:
        """The PaliGemma ids of FAST tokens: ``vocab_size - 1 - fast_skip_tokens - t``.

        ``t`` runs below the FAST vocabulary's size.
        """
        last = self._tokenizer.vocab_size - 1 - self.policy_config.fast_skip_tokens
        return range(last - self.action_tokenizer.vocab_size + 1, last + 1)

    def token_strings(self, token_ids) -> list[str]:
        """Token labels; FAST tokens read ``[FAST t]``."""
        ids = [int(i) for i in token_ids]
        fast, last = self.fast_token_ids(), self.fast_token_ids().stop - 1
        return [f"[FAST {last - i}]" if i in fast else s for i, s in zip(ids, super().token_strings(ids))]

    def _chunk(self, batch: dict[str, Any], seed: int | None, num_steps: int | None) -> torch.Tensor:
        """Decode FAST tokens (greedy unless the config's temperature > 0, then sampled with ``seed``).

        A row whose tokens are not a FAST sequence (a random or heavily steered model emits ids
        outside the FAST range, or no "|" terminator before ``max_decoding_steps``) decodes to
        zeros, as lerobot does: the normalised mean action. That fallback warns
        (`FastDecodingWarning`). With ``validate_action_token_prefix`` (real checkpoints), output
        that does not start with "Action:" is a `FastDecodingError`.
        """
        policy, problems = self._module, []
        decode = policy.detokenize_actions

        def checked(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            problems.extend(self._fast_problems(tokens))
            return decode(tokens, *args, **kwargs)

        policy.detokenize_actions = checked  # this call only: removed below, exceptions included
        try:
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(int(seed))
                return policy.predict_action_chunk(batch)
        except AssertionError as err:  # lerobot asserts the "Action:" prefix
            raise FastDecodingError(
                f"the decoded tokens are not an action sequence ({err}); a steered model may stop "
                "writing 'Action: ...'. Set validate_action_token_prefix=False in the policy config "
                "to decode them anyway (rows that are no FAST sequence become the mean action)."
            ) from err
        finally:
            del policy.detokenize_actions
            if problems:
                warnings.warn(
                    f"{len(problems)} decoded row(s) were not a FAST token sequence ({problems[0]}); lerobot "
                    "decodes what it can and fills the rest with zeros, i.e. the normalised mean action.",
                    FastDecodingWarning, stacklevel=3,
                )

    def _fast_problems(self, tokens: torch.Tensor) -> list[str]:
        """Why each generated row is not a clean FAST sequence, as lerobot's decoder would read it.

        A row is not clean with ids outside the FAST range before the "|" terminator, or with no
        terminator.
        """
        bar = self._tokenizer.convert_tokens_to_ids("|")
        prefix = set(self._tokenizer.encode("Action: ", add_special_tokens=False))
        fast, problems = self.fast_token_ids(), []
        for row in tokens.reshape(-1, tokens.shape[-1]).tolist():
            ended = bar in row
            body = [i for i in (row[:row.index(bar)] if ended else row) if i not in prefix]
            outside = [i for i in body if i not in fast]
            if outside:
                problems.append(f"{len(outside)} of {len(body)} ids outside the FAST range, e.g. {outside[0]}")
            elif not ended:
                problems.append(f"no '|' terminator in {len(row)} tokens")
        return problems

    def _save(self, folder: Path, **options: Any) -> None:
        super()._save(folder, **options)
        self.action_tokenizer.save_pretrained(folder / ACTION_TOKENIZER_DIR)
