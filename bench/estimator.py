"""Benchmark: how far the prompt estimators are from the tokens an upstream counts.

The reservation holds the estimated prompt plus max_tokens until the upstream's usage
settles it, so an estimate that is too low lets a request start that the quota cannot
pay for, and one too high refuses a request that would have fit. This measures, on a
corpus built from this repository and a few hand-written texts per kind:

- ``heuristic`` (~4 characters a token) against OpenAI's own counts (tiktoken's
  cl100k_base and o200k_base, as gpt-4 and gpt-4o count), and against the mock LLM's
  tokenizer (what the tests' upstream reports);
- ``tiktoken`` against the same OpenAI counts (exact by construction: a check).

Per kind of text: samples, median ratio estimate ÷ actual, its 5th and 95th
percentiles, and the share of samples the estimate undercounts (< 1.0).

    .venv/bin/python bench/estimator.py [--write]

Needs the dev extra (tiktoken, bpe-openai for the encoding files offline).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from quotagate.budget.estimate import text_tokens  # noqa: E402
from quotagate.mock_llm.generation import generate_deltas  # noqa: E402
from quotagate.mock_llm.tokenizer import count_tokens  # noqa: E402
from tiktoken_files import seed  # noqa: E402

# Hand-written, a few sentences each: kinds the repository has little of.
OTHER_LANGUAGES = [
    "Der Gateway prüft jede Anfrage gegen das Kontingent des Mandanten, bevor er sie weiterleitet.",
    "Les quotas mensuels sont remis à zéro le jour de facturation, dans le fuseau du client.",
    "El presupuesto se reserva antes de la llamada y se liquida con el uso real del modelo.",
    "网关在转发请求之前，会根据租户的配额检查每一个请求，并预留所需的令牌。",  # noqa: RUF001
    "予算が尽きた場合、ゲートウェイは402を返し、より安いモデルに切り替えることもできます。",
    "Шлюз резервирует токены до ответа модели и возвращает разницу после расчёта.",
]


def chunks(text: str, size: int) -> Iterator[str]:
    words = text.split(" ")
    for i in range(0, len(words), size):
        piece = " ".join(words[i : i + size]).strip()
        if piece:
            yield piece


def corpus(rng: random.Random) -> dict[str, list[str]]:
    docs = [p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]]
    paragraphs = [p for d in docs for p in d.split("\n\n") if not p.startswith(("|", "```", " "))]
    prose = [c for p in paragraphs for c in chunks(p, 80) if len(c) > 40]
    sources = [p.read_text() for p in sorted((REPO / "src").rglob("*.py"))]
    code = [c for text in sources for c in text.split("\n\n\n") if len(c) > 80]
    tags = ["a", "beta", "gamma", "delta", "eu-west"]
    payloads = [
        json.dumps(
            {
                "user": rng.randrange(10**6),
                "items": [rng.random() for _ in range(rng.randrange(1, 12))],
                "tags": rng.sample(tags, 3),
            }
        )
        for _ in range(200)
    ]
    mock_answers = ["".join(generate_deltas(seed, rng.randrange(20, 200))) for seed in range(200)]
    return {
        "English prose (README, docs)": rng.sample(prose, min(400, len(prose))),
        "Python source": rng.sample(code, min(400, len(code))),
        "JSON payloads": payloads,
        "other languages": OTHER_LANGUAGES,
        "mock LLM answers": mock_answers,
    }


def ratios(texts: list[str], estimate: Callable[[str], int], actual: Callable[[str], int]) -> str:
    values = sorted(estimate(t) / max(1, actual(t)) for t in texts)
    q = statistics.quantiles(values, n=20) if len(values) > 1 else values * 19
    under = sum(v < 1.0 for v in values) / len(values)
    return f"{statistics.median(values):.2f} | {q[0]:.2f} to {q[-1]:.2f} | {under:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    import os

    cache = tempfile.mkdtemp(prefix="qg-tiktoken-")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(seed(Path(cache)))
    import tiktoken

    cl100k, o200k = tiktoken.get_encoding("cl100k_base"), tiktoken.get_encoding("o200k_base")
    actuals: dict[str, Callable[[str], int]] = {
        "cl100k_base (gpt-4)": lambda t: len(cl100k.encode_ordinary(t)),
        "o200k_base (gpt-4o)": lambda t: len(o200k.encode_ordinary(t)),
        "mock LLM tokenizer": count_tokens,
    }
    texts = corpus(random.Random(args.seed))
    lines = [
        "Ratio estimate ÷ actual tokens per text: median | 5th to 95th percentile | share "
        "undercounted. A chat request adds 3 tokens a message and 3 for the reply to both "
        "sides (not included here).",
        "",
        "| text | samples | actual counted by | heuristic | tiktoken (same encoding) |",
        "|---|---:|---|---|---|",
    ]
    for kind, samples in texts.items():
        for name, actual in actuals.items():
            exact = ratios(samples, actual, actual) if "mock" not in name else "—"
            lines.append(
                f"| {kind} | {len(samples)} | {name} | {ratios(samples, text_tokens, actual)} "
                f"| {exact} |"
            )
    body = "\n".join(lines)
    print(body)
    if args.write:
        sys.path.insert(0, str(REPO / "bench"))
        from report import record_section

        record_section(
            "estimator", "Prompt estimators against upstream token counts",
            ".venv/bin/python bench/estimator.py --write", body,
        )  # fmt: skip


if __name__ == "__main__":
    main()
