"""The mock's own deterministic tokenizer: a token is a word or one punctuation mark.

Not any real model's tokenizer; it only has to be cheap, stable, and let a client
re-count the mock's output exactly.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")

# OpenAI's chat accounting: each message costs 3 tokens of framing, the reply 3 more.
MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3


def split_tokens(text: str) -> list[str]:
    """The tokens of ``text``, in order; whitespace is not a token."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens ``text`` has."""
    return len(_TOKEN.findall(text))


def count_chat_tokens(contents: list[str]) -> int:
    """Prompt tokens of a chat request whose messages hold ``contents``."""
    return sum(count_tokens(text) + MESSAGE_OVERHEAD for text in contents) + REPLY_OVERHEAD
