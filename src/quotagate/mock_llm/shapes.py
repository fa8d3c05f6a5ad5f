"""The JSON shapes of OpenAI answers: whole completions and stream chunks.

``CHAT`` and ``TEXT`` give the two completion APIs one interface, so the answering
code (``answering``) is written once for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .generation import Choice

JSONObject = dict[str, object]


@dataclass(slots=True, frozen=True)
class AnswerMeta:
    """What every chunk of one answer repeats."""

    id: str
    created: int
    model: str


def usage_block(prompt_tokens: int, completion_tokens: int) -> JSONObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class AnswerShape(Protocol):
    id_prefix: str

    def completion(self, meta: AnswerMeta, choices: list[Choice], usage: JSONObject) -> JSONObject:
        """The non-streamed answer."""
        ...

    def opening(self, meta: AnswerMeta, index: int) -> JSONObject | None:
        """The chunk sent before a choice's first token, if the API has one."""
        ...

    def delta(self, meta: AnswerMeta, index: int, text: str, finish: str | None) -> JSONObject:
        """A chunk carrying ``text`` (one token, or "" with the finish reason)."""
        ...

    def usage(self, meta: AnswerMeta, usage: JSONObject) -> JSONObject:
        """The last chunk, sent when the client asked for ``include_usage``."""
        ...


class ChatShape:
    id_prefix = "chatcmpl-"

    def completion(self, meta: AnswerMeta, choices: list[Choice], usage: JSONObject) -> JSONObject:
        return _envelope(meta, "chat.completion", [_chat_choice(c) for c in choices], usage)

    def opening(self, meta: AnswerMeta, index: int) -> JSONObject | None:
        return self._chunk(meta, index, {"role": "assistant", "content": ""}, None)

    def delta(self, meta: AnswerMeta, index: int, text: str, finish: str | None) -> JSONObject:
        return self._chunk(meta, index, {"content": text} if finish is None else {}, finish)

    def usage(self, meta: AnswerMeta, usage: JSONObject) -> JSONObject:
        return _envelope(meta, "chat.completion.chunk", [], usage)

    @staticmethod
    def _chunk(meta: AnswerMeta, index: int, delta: JSONObject, finish: str | None) -> JSONObject:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _envelope(meta, "chat.completion.chunk", [choice], None)


class TextShape:
    id_prefix = "cmpl-"

    def completion(self, meta: AnswerMeta, choices: list[Choice], usage: JSONObject) -> JSONObject:
        body = [_text_choice(c.index, c.content, c.finish_reason) for c in choices]
        return _envelope(meta, "text_completion", body, usage)

    def opening(self, meta: AnswerMeta, index: int) -> JSONObject | None:
        return None

    def delta(self, meta: AnswerMeta, index: int, text: str, finish: str | None) -> JSONObject:
        return _envelope(meta, "text_completion", [_text_choice(index, text, finish)], None)

    def usage(self, meta: AnswerMeta, usage: JSONObject) -> JSONObject:
        return _envelope(meta, "text_completion", [], usage)


CHAT: AnswerShape = ChatShape()
TEXT: AnswerShape = TextShape()


def _envelope(
    meta: AnswerMeta, kind: str, choices: list[JSONObject], usage: JSONObject | None
) -> JSONObject:
    body: JSONObject = {
        "id": meta.id,
        "object": kind,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _chat_choice(choice: Choice) -> JSONObject:
    return {
        "index": choice.index,
        "message": {"role": "assistant", "content": choice.content},
        "logprobs": None,
        "finish_reason": choice.finish_reason,
    }


def _text_choice(index: int, text: str, finish: str | None) -> JSONObject:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
