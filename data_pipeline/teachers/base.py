"""The one interface every teacher backend implements; runners and annotators only see this."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field

Messages = list[dict]  # OpenAI chat format: [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or stop string), "length" (hit max_new_tokens) or "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    attempts: int = 1


class Teacher(abc.ABC):
    """A chat model that completes a batch of conversations."""

    name: str

    @abc.abstractmethod
    def complete(self, batch: list[Messages], sampling: Sampling) -> list[Completion]:
        """One completion per conversation, in order; failures are returned as finish_reason='error'."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release servers, sessions or GPU memory."""
