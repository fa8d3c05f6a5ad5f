"""tiktoken's real encoding files with no network: bpe-openai (a dev dependency)
ships cl100k_base and o200k_base, byte for byte the files tiktoken downloads."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from quotagate.budget.estimate import seed_cache

ENCODINGS = ("cl100k_base", "o200k_base")


def encoding_files() -> list[Path]:
    spec = find_spec("bpe_openai")  # located, not imported (its import loads a vocabulary)
    assert spec is not None and spec.origin is not None, "bpe-openai is a dev dependency"
    data = Path(spec.origin).parent / "data"
    return [data / f"{name}.tiktoken.gz" for name in ENCODINGS]


def seed(cache_dir: Path) -> Path:
    seed_cache(encoding_files(), cache_dir)
    return cache_dir
