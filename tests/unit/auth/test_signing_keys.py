"""The built-in issuer's signing keys on a fake clock: rotation signs with the new key,
keeps the old one published until its tokens have expired, then deletes it."""

from __future__ import annotations

import stat
from pathlib import Path

import jwt
import pytest

from quotagate.auth.signing_keys import SigningKeys

TTL = 900.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_the_first_key_is_created_private_and_published(tmp_path: Path, alg: str) -> None:
    keys = SigningKeys(tmp_path / "keys", alg, TTL, Clock())
    keys.ensure()
    current = keys.current()
    (path,) = (tmp_path / "keys").glob("*.pem")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (published,) = keys.jwks()["keys"]
    assert published["kid"] == current.kid and published["alg"] == alg
    assert "d" not in published and "p" not in published  # public parts only
    token = jwt.encode({"a": 1}, current.private_key, algorithm=alg)
    assert jwt.decode(token, jwt.PyJWK(published), algorithms=[alg]) == {"a": 1}


def test_rotation_keeps_the_old_key_published_until_its_tokens_expire(tmp_path: Path) -> None:
    clock = Clock()
    keys = SigningKeys(tmp_path, "ES256", TTL, clock)
    keys.ensure()
    old = keys.current()
    clock.now += 60
    new = keys.rotate()
    assert keys.current().kid == new.kid
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old.kid, new.kid}
    clock.now += TTL  # the old key's last token expires now; a margin for skew remains
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old.kid, new.kid}
    clock.now += 301
    assert {k["kid"] for k in keys.jwks()["keys"]} == {new.kid}
    keys.rotate()
    assert old.kid not in {p.stem.split("-", 1)[1] for p in tmp_path.glob("*.pem")}


def test_another_process_rotating_is_seen_without_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    gateway = SigningKeys(tmp_path, "ES256", TTL, clock)
    gateway.ensure()
    clock.now += 1
    rotated = SigningKeys(tmp_path, "ES256", TTL, clock).rotate()  # the CLI
    assert gateway.current().kid == rotated.kid


def test_keys_of_another_algorithm_are_ignored(tmp_path: Path) -> None:
    SigningKeys(tmp_path, "ES256", TTL, Clock()).ensure()
    rsa_keys = SigningKeys(tmp_path, "RS256", TTL, Clock())
    with pytest.raises(LookupError):
        rsa_keys.current()
    rsa_keys.ensure()
    assert rsa_keys.jwks()["keys"][0]["kty"] == "RSA"
