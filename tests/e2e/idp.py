"""A real local identity provider for the JWT tests: an HTTP server in the test process
that publishes key sets per realm, counts every request it receives, and can be told
to fail (500, an HTML page, an empty key set); and the signing side, minting tokens
with PyJWT or by hand for tokens no library would make.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

AUDIENCE = "quotagate"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def public_jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        text = RSAAlgorithm.to_jwk(public)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        text = ECAlgorithm.to_jwk(public)
    else:
        text = OKPAlgorithm.to_jwk(public)
    return {**json.loads(text), "kid": kid, "use": "sig"}


@dataclass
class Realm:
    """One issuer: its keys by kid, what its JWKS endpoint answers, what it was asked."""

    name: str
    keys: dict[str, PrivateKey] = field(default_factory=dict)
    mode: str = "ok"  # ok | 500 | html | empty
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k, kid) for kid, k in self.keys.items()] + self.extra_jwks}


class FakeIdp:
    def __init__(self) -> None:
        self.realms: dict[str, Realm] = {}
        self.hits: Counter[str] = Counter()  # path → requests received
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def realm(self, name: str) -> Realm:
        realm = self.realms[name] = Realm(name)
        return realm

    def issuer(self, realm: str) -> str:
        return f"{self.base_url}/{realm}"

    def count(self, path: str) -> int:
        with self._lock:
            return self.hits[path]

    def jwks_fetches(self, realm: str) -> int:
        return self.count(f"/{realm}/jwks")

    def wait_for_fetch(self, realm: str, since: int, timeout: float = 10.0) -> None:
        """Block until the realm's JWKS has been fetched more than ``since`` times."""
        deadline = time.monotonic() + timeout
        while self.jwks_fetches(realm) <= since:
            assert time.monotonic() < deadline, f"{realm}: no JWKS fetch within {timeout}s"
            time.sleep(0.01)  # poll interval, not a wait for the outcome

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        with self._lock:
            self.hits[path] = self.hits[path] + 1
        name, _, rest = path.strip("/").partition("/")
        realm = self.realms.get(name)
        if realm is None:
            return 404, "text/plain", b"not found"
        if rest == ".well-known/openid-configuration":
            doc = {"issuer": self.issuer(name), "jwks_uri": f"{self.issuer(name)}/jwks"}
            return 200, "application/json", json.dumps(doc).encode()
        if rest != "jwks":
            return 404, "text/plain", b"not found"
        if realm.mode == "500":
            return 500, "text/plain", b"internal error"
        if realm.mode == "html":
            return 200, "text/html", b"<html><body>Maintenance</body></html>"
        body = {"keys": []} if realm.mode == "empty" else realm.jwks()
        return 200, "application/json", json.dumps(body).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = idp._answer(self.path)
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": issuer, "aud": AUDIENCE, "sub": "user-1", "org": "idp-org", "plan": "pro",
        "iat": now, "exp": now + 300,
    }  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: PrivateKey, kid: str | None, alg: str, payload: dict[str, Any], **header: Any) -> str:
    headers = {"kid": kid, **header} if kid is not None else dict(header)
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand: any header, any signature bytes."""
    return f"{b64json(header)}.{b64json(payload)}.{b64(signature)}"
