"""What a verbalising ``mini-openvla`` says before its actions, and how that is stored.

An official OpenVLA config has no field for it, so it lives in this project's settings file
beside ``config.json`` (`nnsight_vla_openvla.config.SIDECAR`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nnsight_vla.family import CheckpointError, InputError


@dataclass(frozen=True)
class Phrases:
    """``n_tokens`` words said before the action tokens, one of the ``learned`` phrases."""

    n_tokens: int
    learned: tuple[str, ...] | None = None

    @classmethod
    def from_sidecar(cls, extra: dict[str, Any], where: str) -> "Phrases":
        """Read the sidecar's keys; a file that is not this project's is refused."""
        try:
            learned = extra.get("phrases")
            return cls(int(extra["phrase_tokens"]), None if learned is None else tuple(learned))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{where} is not this project's settings file ({err!r}); "
                                  "remove it or save the model again.") from err

    def sidecar(self) -> dict[str, Any]:
        """The sidecar's keys (the inverse of `from_sidecar`)."""
        return {"phrase_tokens": self.n_tokens, "phrases": None if self.learned is None else list(self.learned)}

    def ids(self, tokenizer: Any, phrase: str) -> torch.Tensor:
        """``[1, n_tokens]``: the ids of ``phrase``, which must be one this model learned."""
        if not isinstance(phrase, str):
            raise InputError(f"phrase={phrase!r} must be a str of words, such as 'up fast'.")
        if self.learned and " ".join(phrase.split()) not in self.learned:
            raise InputError(f"phrase={phrase!r} is not one this model learned to say, so its actions would mean "
                             f"nothing; use one of {', '.join(map(repr, self.learned))}.")
        ids = tokenizer.encode(" " + phrase.strip(), add_special_tokens=False)
        if len(ids) != self.n_tokens:
            raise InputError(f"phrase={phrase!r}: this model says {self.n_tokens} token(s) before its actions, "
                             f"and the phrase is {len(ids)}; give {self.n_tokens} words such as 'up fast'.")
        return torch.tensor([ids])
