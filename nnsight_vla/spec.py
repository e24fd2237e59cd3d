"""`ModelSpec`: the shape facts of a loaded VLA that analysis code relies on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """Sizes and vocabulary facts of one loaded model.

    Attributes:
        family: Registered family name, e.g. ``"openvla"``.
        n_layers: Number of language-model decoder layers (``model.layers``).
        d_model: Residual-stream width.
        d_mlp: FFN hidden width (``down_proj`` input features).
        vocab_size: Rows of the unembedding (``lm_head``), padding rows included.
            A family may leave these four as None: they are then read from the modules
            (and checked against them otherwise). Other towers' sizes: `VLA.towers`.
        action_token_ids: Token ids that encode actions, or None when actions are not tokens.
        action_dim: Size of one action vector.
        camera_names: Cameras the model expects, in order.
        state_dim: Proprio state size, or None when the model takes no state.
        chunk_size: Actions predicted per call (1 for OpenVLA).
        extra: Family facts, e.g. ``num_inference_steps``.

    Example:
        >>> spec = ModelSpec("openvla", 2, 64, 128, 1088, range(768, 1024), 7)
        >>> spec.n_layers * spec.d_mlp
        256
    """

    family: str
    n_layers: int | None
    d_model: int | None
    d_mlp: int | None
    vocab_size: int | None
    action_token_ids: range | None
    action_dim: int
    camera_names: tuple[str, ...] = ("image",)
    state_dim: int | None = None
    chunk_size: int = 1
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-friendly dict (ranges become ``[start, stop]``)."""
        out = asdict(self)
        ids = self.action_token_ids
        out["action_token_ids"] = None if ids is None else [ids.start, ids.stop]
        out["camera_names"] = list(self.camera_names)
        return out
