"""The built-in issuer's signing keys: private keys on disk under the data dir, one PEM
file each (mode 0600), named ``<created, ms>-<kid>.pem`` so the newest signs.

Rotation adds a key; the one it replaces stops signing at once but its public key stays
published until every token it signed has expired (``token_ttl`` after the rotation,
plus a margin for clock skew). Only then does a rotation delete it. Every gateway that
shares the data dir sees a rotation on its next token request or unknown ``kid``: the
directory's modification time is checked, the files are re-read only when it changed.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

_RETIRE_MARGIN = 300.0  # seconds a retired key outlives its last token (clock skew)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(slots=True, frozen=True)
class SigningKey:
    kid: str
    created_at: float
    private_key: PrivateKey = field(repr=False)

    def public_jwk(self, alg: str) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            text = ECAlgorithm.to_jwk(public)
        else:
            text = RSAAlgorithm.to_jwk(public)
        jwk: dict[str, Any] = json.loads(text)
        return {**jwk, "kid": self.kid, "alg": alg, "use": "sig"}


def _new_private_key(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class SigningKeys:
    def __init__(
        self, directory: Path, alg: str, token_ttl: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = directory
        self.alg = alg
        self.token_ttl = token_ttl
        self._clock = clock
        self._keys: list[SigningKey] = []  # oldest first
        self._mtime = -1
        # The published set, rebuilt only when the files or the expired keys change:
        # every token with an unknown kid for the built-in issuer reads it.
        self._published: tuple[object, dict[str, Any]] = (None, {"keys": []})

    def ensure(self) -> None:
        """Create the first key when there is none (the embedded default needs no setup)."""
        self.reload()
        if not self._keys:
            self.rotate()

    def rotate(self) -> SigningKey:
        """A new signing key; deletes the keys whose tokens have all expired."""
        key = SigningKey(secrets.token_hex(8), self._clock(), _new_private_key(self.alg))
        self._write(key)
        self.reload()
        for old in self._expired():
            self._path(old).unlink(missing_ok=True)
        self.reload()
        return key

    def current(self) -> SigningKey:
        self.reload()
        if not self._keys:
            raise LookupError(f"no signing key in {self.directory}")
        return self._keys[-1]

    def jwks(self) -> dict[str, Any]:
        """The public keys of every key whose tokens may still be valid."""
        self.reload()
        expired = frozenset(k.kid for k in self._expired())
        if self._published[0] != (self._mtime, expired):
            keys = [k.public_jwk(self.alg) for k in self._keys if k.kid not in expired]
            self._published = ((self._mtime, expired), {"keys": keys})
        return self._published[1]

    def _expired(self) -> list[SigningKey]:
        now = self._clock()
        return [
            key
            for key, successor in zip(self._keys, self._keys[1:], strict=False)
            if successor.created_at + self.token_ttl + _RETIRE_MARGIN < now
        ]

    def reload(self) -> None:
        # Synchronous on purpose: one stat() per call (a few µs); the few small files are
        # read only after a rotation changed the directory.
        try:
            mtime = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            self._keys, self._mtime = [], -1
            return
        if mtime != self._mtime:
            keys = [_read(path) for path in sorted(self.directory.glob("*.pem"))]
            # Keys of another algorithm's type (the policy changed it) neither sign nor
            # verify; ensure() then makes one of the right type.
            wanted = ec.EllipticCurvePrivateKey if self.alg == "ES256" else rsa.RSAPrivateKey
            self._keys = [k for k in keys if isinstance(k.private_key, wanted)]
            self._mtime = mtime

    def _path(self, key: SigningKey) -> Path:
        return self.directory / f"{int(key.created_at * 1000):013d}-{key.kid}.pem"

    def _write(self, key: SigningKey) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Written under a temporary name, then renamed: a reader never sees half a key.
        path = self._path(key)
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        partial.rename(path)


def _read(path: Path) -> SigningKey:
    created_ms, kid = path.stem.split("-", 1)
    private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return SigningKey(kid, int(created_ms) / 1000, private_key)
