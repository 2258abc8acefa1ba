"""What the synthesis logic needs from an engine, and nothing more.

One async ``chat`` call per step keeps the conversation logic engine-agnostic:
the in-process vLLM engine, an OpenAI-compatible server and the scripted engine
of the unit tests all plug in here, so the pipeline is never forked per engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StepParams:
    """Sampling for one request; ``seed`` makes it reproducible where the engine allows.

    ``priority`` is a scheduling hint (lower runs first, vLLM's convention): the
    synthesis sets it to minus the requests its conversation still needs after this
    one, so the longest dependent chains run first and the job's tail stays short.
    Engines that can't schedule by priority ignore it."""

    max_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float = 1.0
    seed: int | None = None
    priority: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | ...


class RequestFailed(Exception):
    """This request can't succeed (prompt over max_model_len, rejected): a row failure."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class EngineDead(Exception):
    """The engine itself is gone; the actor must die so Ray replaces it (no endless retry)."""


class Engine(Protocol):
    kind: str
    model: str

    async def chat(
        self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str
    ) -> Completion: ...

    def close(self) -> None: ...
