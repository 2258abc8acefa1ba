"""A scripted engine for unit tests of the conversation logic (never the only test of a path).

Replies are chosen by a function of the request, so tests can plant refusals,
copies, wrong scripts and over-long prompts at chosen steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from m2l_ray.engines.base import Completion, RequestFailed, StepParams


class ScriptedEngine:
    kind = "scripted"
    model = "scripted"

    def __init__(self, reply: Callable[[str, Sequence[dict[str, str]]], str | Completion]) -> None:
        self.reply = reply
        self.requests: list[tuple[str, list[dict[str, str]], StepParams]] = []

    async def chat(self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str) -> Completion:
        self.requests.append((request_id, list(messages), params))
        out = self.reply(request_id, messages)
        if isinstance(out, Exception):
            raise out
        if isinstance(out, Completion):
            return out
        return Completion(out, sum(len(m["content"]) for m in messages) // 4, len(out) // 4, "stop")

    def close(self) -> None:
        pass


def too_long(request_id: str) -> RequestFailed:
    return RequestFailed("prompt_too_long", f"{request_id}: 5000 prompt tokens, max_model_len 2048")
