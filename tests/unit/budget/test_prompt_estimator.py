"""The prompt estimator: tiktoken when its files are on disk, the heuristic otherwise."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken

from quotagate.budget import estimate
from quotagate.budget.estimate import EstimatorUnavailable, load_estimator, seed_cache
from quotagate.config.loader import parse_policy
from quotagate.errors import ConfigError
from tiktoken_files import encoding_files, seed

MODELS: dict[str, str | None] = {"gpt-4": None, "gpt-4o": None, "llama-3": None}
TEXT = 'The quick brown fox jumps over the lazy dog, then writes JSON: {"a": [1, 2, 3]}.'


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    estimate._cached_estimator.cache_clear()
    yield tmp_path / "tiktoken"
    estimate._cached_estimator.cache_clear()


def chat(text: str) -> dict[str, object]:
    return {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    }


def test_auto_uses_tiktoken_when_its_files_are_on_disk(cache: Path) -> None:
    seed(cache)
    estimator = load_estimator("auto", MODELS)
    assert estimator.name == "tiktoken"
    cl100k, o200k = tiktoken.get_encoding("cl100k_base"), tiktoken.get_encoding("o200k_base")
    framing = 3 + 2 * 3  # the reply's priming, 3 a message
    system = len(cl100k.encode("Be brief."))
    assert estimator.prompt_tokens(chat(TEXT), "chat.completions", "gpt-4") == (
        framing + system + len(cl100k.encode(TEXT))
    )
    # gpt-4o counts with o200k_base (tiktoken's model table); the counts differ here.
    o200k_count = framing + len(o200k.encode("Be brief.")) + len(o200k.encode(TEXT))
    assert estimator.prompt_tokens(chat(TEXT), "chat.completions", "gpt-4o") == o200k_count
    # A model tiktoken does not know counts with cl100k_base.
    assert estimator.prompt_tokens({"input": [TEXT, TEXT]}, "embeddings", "llama-3") == 2 * len(
        cl100k.encode(TEXT)
    )


def test_a_model_can_name_its_encoding(cache: Path) -> None:
    seed(cache)
    estimator = load_estimator("tiktoken", {"llama-3": "o200k_base"})
    o200k = tiktoken.get_encoding("o200k_base")
    assert estimator.prompt_tokens({"prompt": TEXT}, "completions", "llama-3") == len(
        o200k.encode(TEXT)
    )


def test_special_token_text_in_a_prompt_is_counted_as_text(cache: Path) -> None:
    seed(cache)
    estimator = load_estimator("tiktoken", {"gpt-4": None})
    text = "ignore this <|endoftext|> marker"
    expected = len(tiktoken.get_encoding("cl100k_base").encode_ordinary(text))
    assert estimator.prompt_tokens({"prompt": text}, "completions", "gpt-4") == expected


def test_auto_falls_back_to_the_heuristic_without_the_files(cache: Path) -> None:
    cache.mkdir()
    estimator = load_estimator("auto", MODELS)
    assert estimator.name == "heuristic"
    assert estimator.prompt_tokens({"prompt": "x" * 10}, "completions", "gpt-4") == 3  # ceil(10/4)


def test_tiktoken_without_its_files_refuses_the_policy_with_the_field(cache: Path) -> None:
    cache.mkdir()
    with pytest.raises(EstimatorUnavailable, match="cl100k_base"):
        load_estimator("tiktoken", {"gpt-4": None})
    doc = """
models: {gpt-4: {deployments: [{url: "http://127.0.0.1:1/v1"}]}}
plans: {free: {models: [gpt-4]}}
accounting: {estimator: tiktoken}
"""
    with pytest.raises(ConfigError, match=r"^accounting\.estimator: tiktoken encodings"):
        parse_policy(doc)


def test_loading_never_touches_the_network(cache: Path) -> None:
    """With no files, even asking for every stock encoding only checks the disk: a
    child process with the network module sabotaged still answers at once."""
    cache.mkdir()
    code = (
        "import socket\n"
        "def no(*a, **k): raise AssertionError('network used')\n"
        "socket.socket.connect = no; socket.create_connection = no\n"
        "from quotagate.budget.estimate import load_estimator\n"
        "print(load_estimator('auto', {'gpt-4': None, 'gpt-4o': None, 'x': 'r50k_base'}).name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={"TIKTOKEN_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert (out.returncode, out.stdout.strip()) == (0, "heuristic"), out.stderr


def test_seeded_files_pass_tiktokens_own_hash_check(tmp_path: Path) -> None:
    """tiktoken checks each cached file's SHA-256 and would download again on a
    mismatch: what seed_cache writes is what tiktoken expects."""
    names = seed_cache(encoding_files(), tmp_path)
    assert names == ["cl100k_base", "o200k_base"]
    code = (
        "from tiktoken_ext.openai_public import cl100k_base as c\n"
        "print(len(c()['mergeable_ranks']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={"TIKTOKEN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.stdout.strip() == "100256", out.stderr


def test_seed_refuses_a_file_that_is_no_encoding(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    with pytest.raises(ValueError, match="not a tiktoken encoding file"):
        seed_cache([bogus], tmp_path / "cache")
