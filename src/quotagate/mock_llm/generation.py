"""Deterministic model output: the prompt's hash picks words from a fixed vocabulary.

Output is returned as the stream deltas, one per token, so that streamed and
non-streamed answers agree exactly: the content is ``"".join(deltas)`` and re-tokenizes
(see ``tokenizer``) to ``len(deltas)`` tokens.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import random
import struct
from dataclasses import dataclass

from .openai_requests import GenerationRequest

# fmt: off
_WORDS: tuple[str, ...] = (
    "the", "a", "quota", "gate", "model", "token", "stream", "answer", "request", "budget",
    "limit", "plan", "key", "route", "upstream", "latency", "window", "burst", "bucket", "ledger",
    "meter", "usage", "policy", "fair", "steady", "quick", "quiet", "bright", "simple", "exact",
    "careful", "prompt", "reply", "server", "client", "message", "counter", "clock", "second",
    "minute", "hour", "day", "cache", "shard", "replica", "leader", "follower", "queue", "batch",
    "signal", "retry", "deadline", "circuit", "breaker", "health", "check", "sample", "value",
    "vector", "random", "mock", "test", "bench",
)
# fmt: on
_PUNCTUATION: tuple[str, ...] = (",", ".")
_PUNCTUATION_CHANCE = 0.12


def prompt_seed(text: str) -> int:
    """A stable 64-bit seed for a prompt (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def prompt_digest(text: str) -> str:
    """A short stable hex id for a prompt, used in completion ids."""
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# Benchmarks repeat one prompt; caching skips ~count RNG draws per request.
@functools.lru_cache(maxsize=4096)
def generate_deltas(seed: int, count: int) -> tuple[str, ...]:
    """``count`` token deltas: words after a space, punctuation glued to the word before."""
    rng = random.Random(seed)
    deltas: list[str] = []
    after_word = False
    capitalize = True
    for position in range(count):
        if after_word and rng.random() < _PUNCTUATION_CHANCE:
            mark = rng.choice(_PUNCTUATION)
            deltas.append(mark)
            after_word, capitalize = False, mark == "."
            continue
        word = rng.choice(_WORDS)
        word = word.capitalize() if capitalize else word
        deltas.append(word if position == 0 else " " + word)
        after_word, capitalize = True, False
    return tuple(deltas)


@functools.lru_cache(maxsize=4096)
def embedding_vector(text: str, dimensions: int) -> tuple[float, ...]:
    """A unit vector of ``dimensions`` floats that depends only on ``text``."""
    rng = random.Random(prompt_seed(text))
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return tuple(value / norm for value in raw)


def embedding_base64(vector: tuple[float, ...]) -> str:
    """OpenAI's ``encoding_format=base64``: little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@dataclass(slots=True, frozen=True)
class Choice:
    """One generated answer, kept as its stream deltas."""

    index: int
    deltas: tuple[str, ...]
    finish_reason: str

    @property
    def content(self) -> str:
        return "".join(self.deltas)


def plan_choices(request: GenerationRequest, default_tokens: int) -> list[Choice]:
    """The answers to ``request``: ``n`` per prompt, each seeded by its prompt and rank."""
    wanted = request.directives.tokens
    wanted = default_tokens if wanted is None else wanted
    limit = request.max_tokens
    count = wanted if limit is None else min(wanted, limit)
    finish_reason = "length" if count < wanted else "stop"
    choices: list[Choice] = []
    for prompt in request.prompts:
        seed = prompt_seed(prompt)
        for rank in range(request.n):
            deltas = generate_deltas(seed + rank, count)
            choices.append(Choice(len(choices), deltas, finish_reason))
    return choices
