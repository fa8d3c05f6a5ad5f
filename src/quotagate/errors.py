"""The gateway's one error tree.

Every failure a client can see is a ``GatewayError``; third-party exceptions are
translated once, where they enter, into the most specific class below. The runner
(``pipeline.runner``) is the single place that turns these into HTTP responses.

    GatewayError                      500 internal_error
    ├── BadRequest                    400 invalid_request_error (request_too_large: more
    │   │                                 than a whole quota or budget)
    │   └── PayloadTooLarge           413
    ├── AuthenticationFailed          401 invalid_api_key
    ├── PermissionDenied              403 model_not_allowed / max_tokens_exceeded
    ├── NotFound                      404 model_not_found / not_found
    ├── MethodNotAllowed              405
    ├── RateLimited                   429 rate_limit_exceeded (+ Retry-After)
    │   └── IpRefused                 429 ip_rate_limited: the pre-auth per-address guard
    ├── QuotaExhausted                402 insufficient_quota, code: the quota's name
    │                                     (429 with accounting.exhausted_status: 429)
    ├── Conflict                      409 idempotency_key_in_use / 422 idempotency_key_reused
    ├── ServiceUnavailable            503 (store or database down and policy is closed)
    │   └── NoDeployment              503 no_healthy_deployment / overloaded (+ Retry-After)
    │       └── Shed                  503 overloaded: the admission queue could not wait
    └── UpstreamError                 502 upstream_error
        ├── UpstreamUnavailable       502 (connect refused / reset)
        └── UpstreamTimeout           504 upstream_timeout
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: int = 500
    error_type: str = "internal_error"
    code: str | None = "internal_error"
    decision: str = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        status: int | None = None,  # when one class answers with more than one status
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or []


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    decision = "bad_request"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"
    decision = "denied_auth"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "invalid_request_error"
    code = "model_not_allowed"
    decision = "denied_plan"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"
    decision = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"
    decision = "bad_request"


class RateLimited(GatewayError):
    status = 429
    error_type = "requests"
    code = "rate_limit_exceeded"
    decision = "rate_limited"


class IpRefused(RateLimited):
    """The per-address guard refused the request before authentication."""

    code = "ip_rate_limited"
    decision = "ip_refused"


class QuotaExhausted(GatewayError):
    """A quota or budget is used up for its period. Never worth retrying before the
    reset: ``x-should-retry: false`` stops the official SDKs' automatic retries."""

    status = 402
    error_type = "insufficient_quota"
    code = "insufficient_quota"
    decision = "quota_exhausted"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int = 402,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"x-should-retry", b"false"), *(headers or [])]
        super().__init__(message, code=code, status=status, headers=headers)


class Conflict(GatewayError):
    status = 409
    error_type = "invalid_request_error"
    code = "idempotency_key_in_use"
    decision = "bad_request"


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    code = "service_unavailable"
    decision = "unavailable"


class NoDeployment(ServiceUnavailable):
    """No deployment of the model (nor of its fallbacks) can take the request now:
    every circuit is open, or every deployment is at its concurrency limit."""

    code = "no_healthy_deployment"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, code=code, headers=[(b"retry-after", str(retry_after).encode())])


class Shed(NoDeployment):
    """Load shedding: the deployment is full and this request could not wait (its
    class's longest wait passed, or higher-priority traffic took its place)."""

    code = "overloaded"
    decision = "shed"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, retry_after=retry_after)


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"
    code = "upstream_error"
    decision = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    decision = "upstream_timeout"


class ConfigError(Exception):
    """A policy file that cannot be used; ``str()`` names the bad field and why."""
