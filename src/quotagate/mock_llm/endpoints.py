"""The OpenAI-compatible endpoints: chat, completions, embeddings, models, health."""

from __future__ import annotations

import orjson

from .answering import answer_completion, send_whole, take_fault
from .errors import InvalidRequest
from .exchange import Exchange
from .faults import Fault
from .generation import embedding_base64, embedding_vector
from .openai_requests import (
    EmbeddingRequest,
    JSONObject,
    read_chat_request,
    read_embedding_request,
    read_text_request,
)
from .pacing import Pacing
from .shapes import CHAT, TEXT
from .state import MockState
from .tokenizer import count_tokens

_HEALTHY = orjson.dumps({"status": "ok"})


def request_object(exchange: Exchange) -> JSONObject:
    """The parsed body, which every POST endpoint needs to be a JSON object."""
    if not isinstance(exchange.body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return exchange.body


async def chat_completions(exchange: Exchange, state: MockState) -> None:
    await answer_completion(exchange, state, read_chat_request(request_object(exchange)), CHAT)


async def completions(exchange: Exchange, state: MockState) -> None:
    await answer_completion(exchange, state, read_text_request(request_object(exchange)), TEXT)


async def embeddings(exchange: Exchange, state: MockState) -> None:
    request = read_embedding_request(request_object(exchange))
    plan = await take_fault(exchange, state, request.directives)
    if plan.fault is Fault.HANG:
        return
    # No tokens are generated, so only the time to first token applies.
    delay = Pacing.of(state.settings, request.directives, state.stats.in_flight).first_s
    if delay > 0 and not await exchange.pause(delay):
        return
    await send_whole(exchange, orjson.dumps(_embedding_list(request)), plan.fault is Fault.DROP)


def _embedding_list(request: EmbeddingRequest) -> JSONObject:
    data: list[JSONObject] = []
    for index, text in enumerate(request.inputs):
        vector = embedding_vector(text, request.dimensions)
        encoded: object = embedding_base64(vector) if request.base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_tokens(text) for text in request.inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": request.model, "usage": usage}


async def list_models(exchange: Exchange, state: MockState) -> None:
    models = [
        {"id": model, "object": "model", "created": 0, "owned_by": "quotagate-mock"}
        for model in state.settings.models
    ]
    await exchange.send_json(200, orjson.dumps({"object": "list", "data": models}))


async def healthz(exchange: Exchange, state: MockState) -> None:
    await exchange.send_json(200, _HEALTHY)
