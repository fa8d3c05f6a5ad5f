"""Token estimates, before the upstream has counted.

An estimate is used for two things only: the up-front reservation (settled later with
the upstream's own count) and streams whose upstream reports no usage. Two counters:

- ``tiktoken``: OpenAI's tokenizer (the ``tiktoken`` extra), exact for OpenAI models.
  Its encoding files are never fetched at run time: ``auto`` uses it only when the
  encoding is already in tiktoken's cache (``TIKTOKEN_CACHE_DIR``).
- ``heuristic``: the calibrated fallback, about four characters a token (rounded up).

Both add OpenAI's chat framing (3 tokens a message, 3 for the reply's priming). What
each gets wrong against the upstream's own counts is measured per request
(``quotagate_prompt_estimate_ratio``) and on a corpus (``bench/estimator.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from quotagate.config.schema import Policy

CHARS_PER_TOKEN = 4
PER_MESSAGE = 3
REPLY_PRIMING = 3
DEFAULT_ENCODING = "cl100k_base"

Counter = Callable[[str], int]
Choice = Literal["auto", "tiktoken", "heuristic"]


class EstimatorUnavailable(RuntimeError):
    """``tiktoken`` was asked for and cannot be loaded without the network."""


def chars_to_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)  # ceil: an estimate should not undercount


def text_tokens(text: str) -> int:
    return chars_to_tokens(len(text))


class Estimator:
    """Prompt tokens of a request body, with the counter of its model."""

    def __init__(self, name: str, counters: dict[str, Counter], default: Counter) -> None:
        self.name = name
        self._counters = counters
        self._default = default

    def prompt_tokens(self, payload: dict[str, Any], endpoint: str, model: str) -> int:
        count = self._counters.get(model, self._default)
        if endpoint == "chat.completions":
            messages = payload.get("messages")
            if not isinstance(messages, list):
                return REPLY_PRIMING
            total = REPLY_PRIMING
            for message in messages:
                if isinstance(message, dict):
                    total += PER_MESSAGE + count(_content_text(message.get("content")))
            return total
        field = "prompt" if endpoint == "completions" else "input"
        return sum(count(t) for t in _texts(payload.get(field)))


HEURISTIC = Estimator("heuristic", {}, text_tokens)


def estimator_of(policy: Policy) -> Estimator:
    """The policy's estimator; loaded once per (choice, models' encodings), so a reload
    that changes neither reuses it."""
    models = tuple(sorted((name, m.tokenizer) for name, m in policy.models.items()))
    return _cached_estimator(policy.accounting.estimator, models)


@lru_cache(maxsize=8)
def _cached_estimator(choice: Choice, models: tuple[tuple[str, str | None], ...]) -> Estimator:
    return load_estimator(choice, dict(models))


def load_estimator(choice: Choice, encodings: dict[str, str | None]) -> Estimator:
    """The estimator ``accounting.estimator`` names, for models → their encoding (None:
    tiktoken's table for that model name, else ``cl100k_base``)."""
    if choice == "heuristic":
        return HEURISTIC
    try:
        import tiktoken
    except ImportError:
        if choice == "auto":
            return HEURISTIC
        raise EstimatorUnavailable(
            "accounting.estimator is tiktoken but tiktoken is not installed "
            "(pip install 'quotagate[tiktoken]')"
        ) from None
    names = {m: encoding or _encoding_for(tiktoken, m) for m, encoding in encodings.items()}
    missing = sorted({n for n in names.values() if not _cached(tiktoken, n)})
    if missing:
        if choice == "auto":
            return HEURISTIC
        raise EstimatorUnavailable(
            f"tiktoken encodings not available offline: {', '.join(missing)} "
            f"(put them in TIKTOKEN_CACHE_DIR; see docs/budgets.md)"
        )
    loaded = {name: _counter(tiktoken.get_encoding(name)) for name in set(names.values())}
    default = loaded.get(DEFAULT_ENCODING) or _default_counter(tiktoken)
    return Estimator("tiktoken", {m: loaded[n] for m, n in names.items()}, default)


def _counter(encoding: Any) -> Counter:
    encode = encoding.encode_ordinary  # special tokens in user text are plain text

    def count(text: str) -> int:
        return len(encode(text))

    return count


def _default_counter(tiktoken: Any) -> Counter:
    if _cached(tiktoken, DEFAULT_ENCODING):
        return _counter(tiktoken.get_encoding(DEFAULT_ENCODING))
    return text_tokens


def _encoding_for(tiktoken: Any, model: str) -> str:
    try:
        return str(tiktoken.encoding_name_for_model(model))
    except KeyError:
        return DEFAULT_ENCODING


def _cached(tiktoken: Any, encoding: str) -> bool:
    """Whether tiktoken can load ``encoding`` without downloading it: an encoding
    defined in code (a plugin, a test), or its file in tiktoken's cache (named by the
    SHA-1 of its URL)."""
    constructors = getattr(tiktoken.registry, "ENCODING_CONSTRUCTORS", None) or {}
    if encoding not in constructors:
        try:  # the table is filled on first use
            tiktoken.registry._find_constructors()
        except AttributeError:
            return False
        constructors = tiktoken.registry.ENCODING_CONSTRUCTORS or {}
    constructor = constructors.get(encoding)
    if constructor is None:
        return False
    if getattr(constructor, "__module__", "") != "tiktoken_ext.openai_public":
        return True
    stem = _STOCK_FILES.get(constructor.__name__)
    if stem is None:
        return False
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    directory = Path(cache) if cache else Path(tempfile.gettempdir()) / "data-gym-cache"
    url = f"{ENCODINGS_URL}/{stem}.tiktoken"
    return (directory / hashlib.sha1(url.encode()).hexdigest()).is_file()


def seed_cache(files: list[Path], cache_dir: Path) -> list[str]:
    """Put encoding files (``cl100k_base.tiktoken``, optionally gzipped) where tiktoken
    looks for them, for machines that cannot download them; the encodings seeded."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    seeded = []
    for path in files:
        stem = path.name.removesuffix(".gz").removesuffix(".tiktoken")
        if stem not in _STOCK_FILES.values():
            raise ValueError(f"{path}: not a tiktoken encoding file ({sorted(_STOCK_FILES)})")
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        url = f"{ENCODINGS_URL}/{stem}.tiktoken"
        (cache_dir / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
        seeded.append(stem)
    return seeded


# tiktoken's stock encodings → the one file each loads (gpt2 loads two: not offered).
ENCODINGS_URL = "https://openaipublic.blob.core.windows.net/encodings"
_STOCK_FILES = {
    "r50k_base": "r50k_base",
    "p50k_base": "p50k_base",
    "p50k_edit": "p50k_base",
    "cl100k_base": "cl100k_base",
    "o200k_base": "o200k_base",
    "o200k_harmony": "o200k_base",
}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url"...}]
        return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("text"))
    return ""


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def prompt_tokens(payload: dict[str, Any], endpoint: str) -> int:
    """The heuristic estimate of a request body's input tokens."""
    return HEURISTIC.prompt_tokens(payload, endpoint, "")
