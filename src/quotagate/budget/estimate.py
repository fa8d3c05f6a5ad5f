"""Token estimates, before the upstream has counted.

A calibrated fallback (no tokenizer files are fetched at run time): about four
characters a token for English text, plus OpenAI's per-message framing (3 tokens a
message, 3 for the reply's priming). It is used for two things only: the up-front
reservation (settled later with the upstream's own count) and streams whose upstream
reports no usage. Its error against the mock's tokenizer is measured in the tests.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
PER_MESSAGE = 3
REPLY_PRIMING = 3


def text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)  # ceil: an estimate should not undercount


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
    """Estimated input tokens of an OpenAI request body."""
    if endpoint == "chat.completions":
        messages = payload.get("messages")
        if not isinstance(messages, list):
            return REPLY_PRIMING
        total = REPLY_PRIMING
        for message in messages:
            if isinstance(message, dict):
                total += PER_MESSAGE + text_tokens(_content_text(message.get("content")))
        return total
    field = "prompt" if endpoint == "completions" else "input"
    return sum(text_tokens(t) for t in _texts(payload.get(field)))
