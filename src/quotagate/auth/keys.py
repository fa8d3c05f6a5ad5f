"""API keys: ``qg-<key id>_<secret>``, shown once, stored as HMAC-SHA256.

The key id (12 hex characters) is visible and indexes the database row; the whole
key is hashed under the server secret, so a database dump reveals no usable key and
a guessed id is worthless without the secret part.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "qg-"
_ID_LEN = 12
_HEX = frozenset("0123456789abcdef")
# Anything longer is not one of our keys: refuse before hashing attacker-sized input.
MAX_KEY_LEN = 128


def generate_key(prefix: str = PREFIX) -> tuple[str, str]:
    """A new ``(key_id, plaintext)`` pair (``prefix``: ``qg-`` API keys, ``qga-``
    admin tokens)."""
    key_id = secrets.token_hex(_ID_LEN // 2)
    return key_id, f"{prefix}{key_id}_{secrets.token_urlsafe(32)}"


def parse_key_id(plaintext: str, prefix: str = PREFIX) -> str | None:
    """The key id inside ``plaintext``, or None when it is not shaped like our key."""
    sep_at = len(prefix) + _ID_LEN
    if (
        len(plaintext) <= sep_at + 1
        or len(plaintext) > MAX_KEY_LEN
        or not plaintext.startswith(prefix)
        or plaintext[sep_at] != "_"
    ):
        return None
    key_id = plaintext[len(prefix) : sep_at]
    return key_id if _HEX.issuperset(key_id) else None


def hash_key(secret: bytes, plaintext: str) -> str:
    return hmac.new(secret, plaintext.encode(), hashlib.sha256).hexdigest()


def verify_key(secret: bytes, plaintext: str, stored_hash: str) -> bool:
    """Constant time in the secret part of the key."""
    return hmac.compare_digest(hash_key(secret, plaintext), stored_hash)


def display_prefix(key_id: str) -> str:
    """What listings show of a key: enough to recognise it, never enough to use it."""
    return f"{PREFIX}{key_id}_…"
