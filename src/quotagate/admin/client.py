"""The CLI's way to a running admin API (``--url``) instead of the database."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

TOKEN_ENV = "QUOTAGATE_ADMIN_TOKEN"


class AdminClientError(Exception):
    """The admin API refused or could not be reached; the message is for the operator."""


class AdminClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise AdminClientError(f"--url must be http:// or https://, not {url!r}")
        self._url = url.rstrip("/")
        self._token = token or os.environ.get(TOKEN_ENV, "")
        if not self._token:
            raise AdminClientError(f"--url needs an admin token: --token or ${TOKEN_ENV}")
        self._timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self._url + path, data=data, method=method,
            headers={"authorization": f"Bearer {self._token}",
                     "content-type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminClientError(f"{exc.code}: {_message(exc.read())}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise AdminClientError(f"cannot reach the admin API at {self._url}: {exc}") from None


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:300]
