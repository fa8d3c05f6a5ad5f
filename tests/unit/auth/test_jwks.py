"""The JWKS cache on a fake clock and a scripted key source: cooldown, one fetch in
flight for any number of waiters, last good keys kept, symmetric keys refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from quotagate.auth.jwks import JwksCache, JwksUnavailable, fits, parse_key_set

RSA_JWK = {
    **json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key())),
    "kid": "r1",
}
EC_JWK = {
    **json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())),
    "kid": "e1",
}
OCT_JWK = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "h1"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """Answers with the scripted documents in turn (an exception is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def cache(source: Source, clock: Clock, cooldown: float = 30, max_age: float = 600) -> JwksCache:
    return JwksCache("test", source, cooldown, max_age, clock)


async def test_keys_are_fetched_once_and_served_from_the_cache() -> None:
    source, clock = Source({"keys": [RSA_JWK, EC_JWK]}), Clock()
    jwks = cache(source, clock)
    assert (await jwks.key("r1", "RS256")) is not None
    assert (await jwks.key("r1", "PS256")) is not None  # an RSA key serves RS* and PS*
    assert (await jwks.key("e1", "ES256")) is not None
    assert source.calls == 1


async def test_a_key_is_never_used_for_another_family() -> None:
    jwks = cache(Source({"keys": [RSA_JWK, EC_JWK]}), Clock())
    assert await jwks.key("r1", "ES256") is None
    assert await jwks.key("e1", "RS256") is None
    assert not fits(RSA_JWK, "HS256")


async def test_unknown_kids_refetch_at_most_once_per_cooldown() -> None:
    source, clock = Source({"keys": [RSA_JWK]}), Clock()
    jwks = cache(source, clock, cooldown=30)
    await jwks.key("r1", "RS256")
    for i in range(100):
        assert await jwks.key(f"unknown-{i}", "RS256") is None
    assert source.calls == 1
    clock.now += 30
    assert await jwks.key("unknown", "RS256") is None
    assert await jwks.key("unknown-again", "RS256") is None
    assert source.calls == 2


async def test_concurrent_unknown_kids_share_one_fetch() -> None:
    source, clock = Source({"keys": [RSA_JWK]}), Clock()
    source.gate = asyncio.Event()
    jwks = cache(source, clock)
    waiters = [asyncio.create_task(jwks.key(f"k{i}", "RS256")) for i in range(50)]
    await asyncio.sleep(0)  # let every waiter reach the fetch in flight
    source.gate.set()
    assert await asyncio.gather(*waiters) == [None] * 50
    assert source.calls == 1


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("500"), {"not": "a key set"}, {"keys": []}, {"keys": [OCT_JWK]}],
    ids=["error", "not-jwks", "empty", "only-symmetric"],
)
async def test_last_good_keys_are_kept_when_a_refetch_fails(failure: Any) -> None:
    source, clock = Source({"keys": [RSA_JWK]}, failure), Clock()
    jwks = cache(source, clock)
    assert await jwks.key("r1", "RS256") is not None
    clock.now += 601  # stale: refetched behind the request, and that refetch fails
    await jwks.key("r1", "RS256")
    await jwks.refresh()
    assert source.calls == 2
    assert await jwks.key("r1", "RS256") is not None


async def test_no_key_set_ever_loaded_is_unavailable_not_invalid() -> None:
    jwks = cache(Source(RuntimeError("down")), Clock())
    with pytest.raises(JwksUnavailable):
        await jwks.key("r1", "RS256")


def test_symmetric_and_private_keys_are_refused() -> None:
    private = {**EC_JWK, "kid": "p1", "d": "secret"}
    assert set(parse_key_set({"keys": [OCT_JWK, private, RSA_JWK]})) == {"r1"}
    with pytest.raises(ValueError):
        parse_key_set({"keys": [OCT_JWK]})


async def test_a_token_without_kid_uses_the_one_key_of_its_family() -> None:
    jwks = cache(Source({"keys": [RSA_JWK, EC_JWK]}), Clock())
    assert await jwks.key(None, "ES256") is not None
    jwks2 = cache(Source({"keys": [RSA_JWK, {**RSA_JWK, "kid": "r2"}]}), Clock())
    assert await jwks2.key(None, "RS256") is None  # two candidates: ambiguous


def test_rsa_keys_under_2048_bits_are_refused() -> None:
    weak = json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key()))
    assert set(parse_key_set({"keys": [{**weak, "kid": "weak"}, RSA_JWK]})) == {"r1"}


def test_keys_that_do_not_parse_are_dropped() -> None:
    broken = {**EC_JWK, "kid": "bad", "x": "AAAA"}  # not a point on the curve
    assert set(parse_key_set({"keys": [broken, RSA_JWK]})) == {"r1"}
