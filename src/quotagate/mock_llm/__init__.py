"""An OpenAI-compatible mock upstream for demos, end-to-end tests and benchmarks.

Answers are deterministic in the prompt; faults are injected by rate, by directives
written in the prompt (see ``directives``), or live through ``/_mock/faults``.
"""

from .app import create_app
from .server import make_server, run
from .settings import MockSettings
from .tokenizer import count_tokens, split_tokens

__all__ = ["MockSettings", "count_tokens", "create_app", "make_server", "run", "split_tokens"]
