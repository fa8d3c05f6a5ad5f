"""Reading OpenAI request bodies into what the mock needs to answer them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .directives import Directives, parse_directives
from .errors import InvalidRequest
from .tokenizer import count_chat_tokens, count_tokens

JSONObject = dict[str, object]
_MAX_DIMENSIONS = 8192
# OpenAI's reasoning models (o1, o3-mini, o4-mini) refuse a chat request's max_tokens
# with a 400, as the real API does: they take max_completion_tokens only.
_REASONING = re.compile(r"o\d")


@dataclass(slots=True, frozen=True)
class GenerationRequest:
    """A chat or text completion request, reduced to what shapes the answer."""

    model: str
    prompts: tuple[str, ...]  # the text each group of choices is derived from
    prompt_tokens: int
    max_tokens: int | None
    n: int
    stream: bool
    include_usage: bool
    directives: Directives


@dataclass(slots=True, frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    dimensions: int
    base64: bool
    directives: Directives


def read_chat_request(body: JSONObject) -> GenerationRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    contents = [_message_text(message) for message in messages]
    roles = [str(message.get("role", "")) for message in messages]
    prompt = "\n".join(f"{role}: {text}" for role, text in zip(roles, contents, strict=True))
    if _REASONING.match(_model(body)) and "max_tokens" in body:
        raise InvalidRequest(
            "'max_tokens' is not supported by this model: use 'max_completion_tokens'",
            param="max_tokens",
        )
    max_tokens = _optional_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens")
    return _generation(body, (prompt,), count_chat_tokens(contents), max_tokens)


def read_text_request(body: JSONObject) -> GenerationRequest:
    prompts = _strings(body, "prompt")
    prompt_tokens = sum(count_tokens(prompt) for prompt in prompts)
    return _generation(body, prompts, prompt_tokens, _optional_int(body, "max_tokens"))


def read_embedding_request(body: JSONObject) -> EmbeddingRequest:
    inputs = _strings(body, "input")
    dimensions = _optional_int(body, "dimensions", low=1, high=_MAX_DIMENSIONS)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
        )
    return EmbeddingRequest(
        model=_model(body),
        inputs=inputs,
        dimensions=dimensions or 8,
        base64=encoding == "base64",
        directives=parse_directives("\n".join(inputs)),
    )


def _generation(
    body: JSONObject, prompts: tuple[str, ...], prompt_tokens: int, max_tokens: int | None
) -> GenerationRequest:
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return GenerationRequest(
        model=_model(body),
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        n=_optional_int(body, "n", low=1, high=128) or 1,
        stream=stream,
        include_usage=include_usage,
        directives=parse_directives("\n".join(prompts)),
    )


def _message_text(message: object) -> str:
    if not isinstance(message, dict):
        raise InvalidRequest("each message must be an object", param="messages")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        # Only text parts carry tokens; images and audio are ignored by the mock.
        parts = [part for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "\n".join(str(part.get("text", "")) for part in parts)
    raise InvalidRequest("message content must be a string or an array", param="messages")


def _model(body: JSONObject) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required", param="model")
    return model


def _strings(body: JSONObject, name: str) -> tuple[str, ...]:
    value = body.get(name)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(str(item) for item in value)
    raise InvalidRequest(f"'{name}' must be a string or a non-empty array of strings", param=name)


def _optional_int(
    body: JSONObject, name: str, *, low: int = 0, high: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be an integer", param=name)
    if value < low or (high is not None and value > high):
        raise InvalidRequest(f"'{name}' is out of range", param=name)
    return value
