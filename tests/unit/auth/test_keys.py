"""API key format, parsing and hashing."""

from __future__ import annotations

import pytest

from quotagate.auth.keys import (
    MAX_KEY_LEN,
    PREFIX,
    display_prefix,
    generate_key,
    hash_key,
    parse_key_id,
    verify_key,
)

SECRET = b"server-secret"


def test_generated_key_has_prefix_and_parses_back_to_its_id() -> None:
    key_id, plaintext = generate_key()
    assert plaintext.startswith(PREFIX + key_id + "_")
    assert parse_key_id(plaintext) == key_id
    assert len(plaintext) <= MAX_KEY_LEN


def test_keys_are_unique() -> None:
    assert len({generate_key()[1] for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "qg-",
        "sk-123",
        "qg-abc_def",
        "qg-0123456789ab-rest",
        "qg-0123456789AB_x",
        "qg-0123456789ab_",
        "qg-0123456789ab_" + "x" * 200,
        "Qg-0123456789ab_xyz",
    ],
)
def test_malformed_keys_have_no_id(bad: str) -> None:
    assert parse_key_id(bad) is None


def test_hash_is_keyed_and_verifies_in_constant_time_api() -> None:
    _, plaintext = generate_key()
    stored = hash_key(SECRET, plaintext)
    assert len(stored) == 64 and plaintext not in stored
    assert verify_key(SECRET, plaintext, stored)
    assert not verify_key(b"other-secret", plaintext, stored)
    assert not verify_key(SECRET, plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"), stored)


def test_display_prefix_never_contains_the_secret_part() -> None:
    key_id, plaintext = generate_key()
    shown = display_prefix(key_id)
    assert plaintext.split("_", 1)[1] not in shown
