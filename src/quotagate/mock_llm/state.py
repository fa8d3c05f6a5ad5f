"""What the running mock remembers between requests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .faults import MockStats
from .settings import MockSettings

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class RecordedRequest:
    """The latest ``/v1`` request, kept raw; decoded only when a test asks for it."""

    path: str
    headers: Headers
    body: object

    def as_json(self) -> dict[str, object]:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self.headers
        }
        return {"headers": headers, "body": self.body, "path": self.path}


@dataclass(slots=True)
class MockState:
    settings: MockSettings
    stats: MockStats = field(default_factory=MockStats)
    rng: random.Random = field(default_factory=random.Random)
    last_request: RecordedRequest | None = None

    def __post_init__(self) -> None:
        self.rng.seed(self.settings.seed)
