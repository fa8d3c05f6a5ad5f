"""Errors the mock answers with, shaped like OpenAI's.

MockError            any status, OpenAI-shaped body
└── InvalidRequest   400 invalid_request_error
DroppedConnection    not an answer: uvicorn closes the socket mid-response
"""

from __future__ import annotations

import orjson

# OpenAI's (type, code) per status; unlisted 4xx fall back to invalid_request_error.
_KIND_BY_STATUS: dict[int, tuple[str, str | None]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def error_kind(status: int) -> tuple[str, str | None]:
    """The OpenAI error ``type`` and ``code`` that go with an HTTP status."""
    if status >= 500:
        return "server_error", None
    return _KIND_BY_STATUS.get(status, ("invalid_request_error", None))


class MockError(Exception):
    """An answer with an error status and an OpenAI-shaped error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers

    def body(self) -> bytes:
        error_type, code = error_kind(self.status)
        error = {"message": self.message, "type": error_type, "param": self.param, "code": code}
        return orjson.dumps({"error": error})


class InvalidRequest(MockError):
    """The request could not be understood (400)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(400, message, param=param)


class DroppedConnection(Exception):
    """Raised after a response has started so that uvicorn aborts the connection.

    ASGI has no "abort" message; an exception after ``http.response.start`` is the
    only way to make the server close the socket without finishing the body.
    """
