"""What a secret looks like in a log line, for the whole-suite check in conftest.py.

Shapes, not values: any API key, admin token, OAuth client secret or JWT of the shapes
quotagate issues, and any bearer credential, wherever a gateway wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path

SECRET = re.compile(
    rb"qg-[0-9a-f]{12}_[\w-]{16,}"  # an API key
    rb"|qga-[0-9a-f]{12}_[\w-]{16,}"  # an admin token
    rb"|qgs_[\w-]{16,}"  # an OAuth client secret
    rb"|eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*"  # a JWT (signed or not)
    rb"|(?i:bearer)\s+[\w.~+/=-]{16,}"  # any bearer credential
    rb"|sk-upstream-credential-e2e"  # the e2e upstream's own credential
)


def leaks(root: Path) -> list[str]:
    """``file: secret`` for every secret-shaped string in a log under ``root``."""
    found = []
    for path in sorted(root.rglob("*.log")):
        for match in SECRET.finditer(path.read_bytes()):
            found.append(f"{path.relative_to(root)}: {match.group()[:24]!r}…")
    return found
