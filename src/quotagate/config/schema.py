"""The policy file's schema: pydantic v2 models, frozen once validated.

Unknown keys are refused so a typo (``limit:`` for ``limits:``) is an error that names
the field, not a silently ignored line.
"""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, field_validator, model_validator

from quotagate.config.durations import Duration, Per
from quotagate.config.observability import ObservabilityConfig

SCOPES = ("global", "ip", "tenant", "key", "user", "model", "route")
# The gateway's own paths: a route alias cannot take one.
RESERVED_PATHS = frozenset(
    {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/healthz",
        "/readyz", "/metrics", "/oauth/token", "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
    }
)  # fmt: skip


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT")
    return value


def _check_scopes(value: str | list[str]) -> str | list[str]:
    for scope in [value] if isinstance(value, str) else value:
        if scope not in SCOPES and not (scope.startswith("header:") and len(scope) > 7):
            raise ValueError(
                f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)} or header:<name>"
            )
    return value


class ServerConfig(Frozen):
    listen: str = "127.0.0.1:8080"
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    # Load balancers / proxies whose X-Forwarded-For is believed (CIDRs). From any other
    # peer the header is ignored: the client address (per-IP limits, logs) is the peer's.
    trusted_proxies: list[IPvAnyNetwork] = []
    # Tracked objects allocated (net) between young-generation collections of Python's
    # cycle collector (Python's own default: 700). A request allocates a few hundred, so
    # at 700 the collector ran every few requests; read at start.
    gc_threshold: int = Field(default=10_000, ge=100)
    _listen = field_validator("listen")(_check_listen)


STORE_SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster")


class StoreConfig(Frozen):
    url: str = "memory://"
    prefix: str = "qg:"  # every Redis key starts with this
    # Per store call; past it the request is decided by each limit's on_store_error.
    timeout: Duration = 0.025
    # Gateway instances expected to share the store: on_store_error: local divides each
    # limit by this so the instances together stay near the limit.
    instances: int = Field(default=1, ge=1)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown: Duration = 1.0

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if "://" not in value or scheme not in STORE_SCHEMES:
            raise ValueError(
                f"unsupported store {value!r}: expected one of "
                + ", ".join(f"{s}://" for s in STORE_SCHEMES)
            )
        return value


class DatabaseConfig(Frozen):
    url: str = "sqlite+aiosqlite:///./data/quotagate.db"
    # PostgreSQL only: the schema (search_path) quotagate's tables live in.
    schema_name: str | None = Field(default=None, alias="schema")

    @field_validator("url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                f"unsupported database {value.split('://', 1)[0]!r}: "
                "use sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value


ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


class ClaimMap(Frozen):
    """Where each part of the principal is read from: a claim name or a dotted path
    into nested claims (``realm_access.roles``)."""

    tenant: str = "tenant"
    user: str = "sub"
    plan: str | None = None  # none: the tenant's plan in the database, else default_plan
    scopes: str | None = "scope"  # a space-separated string or a list


class JwtIssuer(Frozen):
    issuer: str
    audience: str | list[str] | None = None
    jwks_url: str | None = None
    # Read jwks_uri from {issuer}/.well-known/openid-configuration instead.
    discovery: bool = False
    algorithms: list[str] = list(DEFAULT_ALGORITHMS)
    # HS256 only with a shared secret read from this environment variable.
    hs256_secret_env: str | None = None
    claims: ClaimMap = ClaimMap()
    required_claims: list[str] = []  # beyond exp, iss (and aud when audience is set)
    default_plan: str | None = None  # a token without a plan, for a tenant not in the database
    leeway: Duration = 30.0  # clock skew allowed on exp / nbf / iat
    # An unknown kid refetches the key set at most once per cooldown.
    jwks_cooldown: Duration = 30.0
    jwks_max_age: Duration = 600.0  # keys are refetched when older than this

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"invalid issuer {value!r}: expected an http(s) URL")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"invalid jwks_url {value!r}: expected an http(s) URL")
        return value

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg not in (*ASYMMETRIC_ALGORITHMS, "HS256"):
                raise ValueError(
                    f"unsupported algorithm {alg!r}: expected some of "
                    f"{', '.join(ASYMMETRIC_ALGORITHMS)} or HS256"
                )
        if not value:
            raise ValueError("at least one algorithm is needed")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuer:
        asymmetric = [a for a in self.algorithms if a != "HS256"]
        if "HS256" in self.algorithms and self.hs256_secret_env is None:
            raise ValueError("HS256 needs a shared secret: set hs256_secret_env")
        if self.hs256_secret_env is not None and "HS256" not in self.algorithms:
            raise ValueError("hs256_secret_env is set but HS256 is not in algorithms")
        if asymmetric and (self.jwks_url is None) == (not self.discovery):
            raise ValueError("give exactly one of jwks_url or discovery: true")
        return self


class TokenRate(Frozen):
    """Token requests, whatever their outcome, allowed in `per` (bursts up to `requests`)."""

    requests: int = Field(gt=0)
    per: Duration = 60.0


class OAuthIssuerConfig(Frozen):
    """The built-in OAuth2 issuer (client-credentials grant)."""

    enabled: bool = False
    token_ttl: Duration = 900.0
    # The `iss` of its tokens; default: the gateway's own address.
    issuer: str | None = None
    audience: str = "quotagate"
    algorithm: Literal["ES256", "RS256"] = "ES256"
    # Counted in the limit store (shared by every instance) before the client is looked
    # up or its secret hashed; beyond either, 429 with Retry-After. A client needs one
    # token per token_ttl: these only bound guessing and floods of lookups.
    per_client: TokenRate = TokenRate(requests=60)
    per_address: TokenRate = TokenRate(requests=120)


class AuthConfig(Frozen):
    # How long a verified key stays cached in-process: the upper bound on how long a
    # revoked key may still be accepted by a running gateway.
    key_cache_ttl: Duration = 5.0
    jwt: list[JwtIssuer] = []
    oauth_issuer: OAuthIssuerConfig = OAuthIssuerConfig()
    # A bearer token longer than this is refused before any parsing or cryptography.
    max_token_bytes: int = Field(default=8192, ge=512, le=65536)

    @model_validator(mode="after")
    def _distinct_issuers(self) -> AuthConfig:
        names = [i.issuer for i in self.jwt]
        if len(set(names)) != len(names):
            raise ValueError("two jwt issuers with the same issuer")
        return self


class RouteAlias(Frozen):
    """A path that is a chat completion for one model (``/v1/gpt4``)."""

    model: str
    # force: the route's model replaces the client's; default: only fills in a missing one.
    mode: Literal["force", "default"] = "force"


class Price(Frozen):
    input_per_1m: float = Field(default=0.0, ge=0)
    output_per_1m: float = Field(default=0.0, ge=0)


class Timeouts(Frozen):
    connect: Duration = 2.0
    first_byte: Duration = 60.0  # until the answer's headers
    idle: Duration = 30.0  # the longest gap between two chunks of a body or stream
    total: Duration = 600.0  # the whole call, retries included


class HealthSignal(Frozen):
    url: str
    field: str | None = None  # JSON: e.g. memory_pressure, or gpu.kv_cache_usage
    metric: str | None = None  # Prometheus text: e.g. vllm:gpu_cache_usage_perc
    max: float = Field(default=0.9, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> HealthSignal:
        if (self.field is None) == (self.metric is None):
            raise ValueError("a health_signal reads exactly one of: field (JSON), metric")
        return self


class Deployment(Frozen):
    url: str
    # Names the deployment in headers, metrics, logs and /readyz (default: host:port).
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w.:@-]+$")
    region: str = "default"
    weight: int = Field(default=1, ge=1)
    # The upstream credential is read from this environment variable, never from a request.
    api_key_env: str | None = None
    timeouts: Timeouts = Timeouts()
    # Requests in flight to this deployment at most; beyond it traffic spills over or
    # waits in the admission queue (shaping.queue). With shaping.adaptive, the ceiling
    # of the adaptive limit.
    max_concurrency: int | None = Field(default=None, gt=0)
    price: Price | None = None  # this deployment's price, if not the model's
    # The upstream's own load figure (shaping.adaptive): GET this URL; a JSON `field`
    # (dotted path) or a Prometheus `metric` above `max` means it is under pressure.
    health_signal: HealthSignal | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"invalid upstream url {value!r}: expected http:// or https://")
        return value.rstrip("/")


class Model(Frozen):
    price: Price = Price()
    deployments: list[Deployment] = Field(min_length=1)
    # Models that serve the request, in order, when this one cannot (outage, overload,
    # every circuit open); billed at the model that answered.
    fallback: list[str] = []
    aliases: list[str] = []  # other names clients may ask for this model by

    @model_validator(mode="after")
    def _distinct_deployments(self) -> Model:
        names = [d.name or d.url for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError("two deployments with the same name (or url)")
        return self

    # A caller needs this scope (a JWT's `scope` claim) on top of a plan that includes
    # the model; API keys carry no scopes, so a scoped model is for JWT callers only.
    scope: str | None = Field(default=None, min_length=1, max_length=200)
    # The tiktoken encoding that counts this model's tokens (cl100k_base, o200k_base);
    # default: tiktoken's table for the model's name, else cl100k_base.
    tokenizer: str | None = None
    # The field a chat request gets when the gateway sets its output cap itself (the
    # client named none: the plan's default_max_tokens of a metered request, the plan's
    # max_tokens, a clamp): OpenAI's reasoning models (o1, o3, o4-mini) refuse
    # max_tokens and take max_completion_tokens. Legacy completions always get
    # max_tokens.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


class LimitRule(Frozen):
    scope: str | list[str] = "key"
    requests: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)  # prompt + completion tokens (TPM)
    concurrent: int | None = Field(default=None, gt=0)  # requests in flight at once
    # A duration (rolling windows), or day / week / month: calendar periods that reset
    # at midnight in `timezone` (months on `billing_day`).
    per: Per | None = None
    burst: int | None = Field(default=None, gt=0)
    # gcra: a bucket refilled continuously (bursts up to `burst`); sliding_window: at
    # most `requests` in any window of length `per` (a log per counter: exact, dearer).
    # fixed_window: a counter reset every `per`, aligned on the store's clock.
    algorithm: Literal["gcra", "sliding_window", "fixed_window"] = "gcra"
    timezone: str = "UTC"
    billing_day: int = Field(default=1, ge=1, le=31)
    # When the store cannot answer: allow, refuse with 503, or decide per instance.
    on_store_error: Literal["open", "closed", "local"] = "local"
    # A concurrency lease of a gateway that died frees itself after this long; keep it
    # above the longest request (the deployments' total timeout).
    lease_ttl: Duration = 600.0
    # Only for these traffic classes (x-quotagate-class), on counters of their own;
    # empty: every request.
    classes: list[Literal["interactive", "batch"]] = []

    _scopes = field_validator("scope")(_check_scopes)

    @model_validator(mode="after")
    def _one_amount(self) -> LimitRule:
        amounts = [a for a in (self.requests, self.tokens, self.concurrent) if a is not None]
        if len(amounts) != 1:
            raise ValueError("a limit needs exactly one amount: requests, tokens or concurrent")
        if self.concurrent is None and self.per is None:
            raise ValueError("a requests or tokens limit needs a window: per")
        if self.concurrent is not None and (self.per is not None or self.burst is not None):
            raise ValueError("a concurrent limit takes no per or burst")
        if self.algorithm == "sliding_window" and self.burst is not None:
            raise ValueError("a sliding_window limit takes no burst")
        if isinstance(self.per, str) and (self.algorithm != "gcra" or self.burst is not None):
            raise ValueError("a calendar limit (per: day/week/month) takes no algorithm or burst")
        if self.tokens is not None and self.algorithm == "sliding_window":
            raise ValueError("a tokens limit cannot use sliding_window (a log counts requests)")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def scopes(self) -> tuple[str, ...]:
        return (self.scope,) if isinstance(self.scope, str) else tuple(self.scope)


Calendar = Literal["day", "week", "month"]
Thresholds = list[Annotated[float, Field(gt=0, lt=1)]]


class Fallback(Frozen):
    fallback: str  # a cheaper model that serves the request instead


class QuotaRule(Frozen):
    """An amount per calendar period, reset at midnight in the tenant's time zone
    (months on the tenant's billing day). Exhausting one answers 402."""

    scope: str | list[str] = "tenant"
    model: str | None = None  # only requests for this model count (and are refused)
    tokens: int | None = Field(default=None, gt=0)
    requests: int | None = Field(default=None, gt=0)
    cost: float | None = Field(default=None, gt=0)  # money, in the policy's currency
    per: Calendar = "month"
    alerts: Thresholds = []  # fractions used that send a warning header and an alert
    # reject (402), lower max_tokens to what is left (clamp), or serve a cheaper model.
    on_exhausted: Literal["reject", "clamp"] | Fallback = "reject"
    on_store_error: Literal["open", "closed", "local"] = "closed"

    _scopes = field_validator("scope")(_check_scopes)

    @model_validator(mode="after")
    def _one_amount(self) -> QuotaRule:
        if sum(a is not None for a in (self.tokens, self.requests, self.cost)) != 1:
            raise ValueError("a quota needs exactly one amount: tokens, requests or cost")
        if self.on_exhausted == "clamp" and self.requests is not None:
            raise ValueError("a requests quota cannot clamp max_tokens: use reject or fallback")
        return self

    @property
    def scopes(self) -> tuple[str, ...]:
        return (self.scope,) if isinstance(self.scope, str) else tuple(self.scope)


class Budget(Frozen):
    """Money per calendar period, charged at each model's price (integer micro-units)."""

    amount: float = Field(gt=0)
    currency: str = "USD"
    per: Calendar = "month"
    scope: str | list[str] = "tenant"
    alerts: Thresholds = []
    on_exhausted: Literal["reject", "clamp"] | Fallback = "reject"
    on_store_error: Literal["open", "closed", "local"] = "closed"

    _scopes = field_validator("scope")(_check_scopes)

    def as_quota(self) -> QuotaRule:
        return QuotaRule(
            scope=self.scope, cost=self.amount, per=self.per, alerts=self.alerts,
            on_exhausted=self.on_exhausted, on_store_error=self.on_store_error,
        )  # fmt: skip


class Plan(Frozen):
    models: list[str] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    # Above the cap: lower max_tokens to the cap (clamp) or refuse the request (reject).
    max_tokens_policy: Literal["clamp", "reject"] = "clamp"
    # What a request without max_tokens is assumed to produce when reserving tokens
    # (settlement then charges what it really produced).
    default_max_tokens: int = Field(default=1024, gt=0)
    limits: list[LimitRule] = []
    quotas: list[QuotaRule] = []
    budget: Budget | None = None
    # on_exhausted: clamp serves a request only if at least this many output tokens fit.
    clamp_min_tokens: int = Field(default=16, gt=0)
    # Fallback chains for this plan's callers, replacing the models' own (model → chain).
    fallbacks: dict[str, list[str]] = {}
    # Exact-match response cache (routing.cache): always, only when the request's model
    # cannot serve it (overload, outage: the degrade path), or never.
    cache: Literal["always", "degrade", "off"] = "off"
    # Who goes first when capacity is short (higher first; weighted-fair: a level gets
    # slots in proportion to priority + 1), and is shed last.
    priority: int = Field(default=0, ge=0, le=100)
    # When every deployment of the model is full: wait in its admission queue (queue),
    # or first try the cache and the fallback models (degrade), then wait.
    on_overload: Literal["queue", "degrade"] = "queue"


class BreakerConfig(Frozen):
    """A deployment's circuit opens on consecutive failures or a failure rate; after
    ``open_for`` a few probe requests decide whether it closes again."""

    consecutive_failures: int = Field(default=5, gt=0)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    min_requests: int = Field(default=20, gt=0)  # in `window`, before the rate counts
    window: Duration = 10.0
    open_for: Duration = 5.0
    half_open_probes: int = Field(default=1, gt=0)


class RetryConfig(Frozen):
    attempts: int = Field(default=3, ge=1)  # tries in all, the first included
    # Retries add at most this fraction of the requests as extra load (plus
    # min_per_second), so a failing fleet is not hit harder.
    budget: float = Field(default=0.2, ge=0, le=1)
    min_per_second: float = Field(default=2.0, ge=0)
    # An upstream 429's retry-after longer than this is passed to the client, not waited.
    max_retry_after: Duration = 2.0


class HealthCheckConfig(Frozen):
    """Active checks: GET <deployment url><path> every `interval`; 2xx is healthy."""

    path: str = "/models"
    interval: Duration = 5.0
    timeout: Duration = 1.0


class CacheConfig(Frozen):
    """Exact-match response cache for deterministic requests (temperature 0, one
    choice), per tenant; plans opt in with ``cache:``."""

    store: Literal["memory", "redis"] = "memory"  # redis: the limits store's server
    ttl: Duration = 300.0
    max_entries: int = Field(default=10_000, gt=0)  # memory: least recently used go first
    max_bytes: int = Field(default=262_144, gt=0)  # larger answers are not cached


class RoutingConfig(Frozen):
    region: str | None = None  # this gateway's region
    # The client's region, when it sends one the catalog knows (null: not read).
    region_header: str | None = "x-quotagate-region"
    # Regions nearest first, per region: spill-over order (unlisted regions come last).
    nearest: dict[str, list[str]] = {}
    # least_inflight: fewest requests in flight per weight; latency: that times the
    # deployment's recent time to first token (both between two weighted random picks).
    strategy: Literal["least_inflight", "latency"] = "least_inflight"
    retries: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    health_check: HealthCheckConfig | None = None
    cache: CacheConfig = CacheConfig()
    # Circuit changes are published on the store's Redis so every instance learns them.
    share_health: bool = True

    @field_validator("region_header")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value


class Reserve(Frozen):
    """Slots of every deployment kept for plans of at least this priority: lower ones
    queue once only the reserved slots are left (enterprise does not wait behind free
    traffic for a slot to end)."""

    slots: int = Field(default=1, ge=1)
    priority: int = Field(default=10, ge=0, le=1000)


class QueueConfig(Frozen):
    """Requests wait here when their deployment is at its concurrency limit."""

    max_length: int = Field(default=256, ge=0)  # waiting per deployment; 0: shed at once
    reserve: Reserve | None = None
    # The longest wait per traffic class (x-quotagate-class), then 503 with Retry-After.
    max_wait: dict[Literal["interactive", "batch"], Duration] = {
        "interactive": 2.0,
        "batch": 120.0,
    }


class AdaptiveConfig(Frozen):
    """Each deployment's concurrency limit follows its health (AIMD): every `interval`
    it is cut by `backoff` when time to first token, time per output token, the error
    share or the upstream's health signal is above target, else raised by one while the
    limit was reached."""

    min: int = Field(default=1, ge=1)
    max: int = Field(default=64, ge=1)  # a deployment's max_concurrency caps it lower
    initial: int = Field(default=8, ge=1)
    interval: Duration = 0.5
    target_ttft: Duration = 2.0
    target_tpot: Duration = 0.2
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    backoff: float = Field(default=0.75, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveConfig:
        if not self.min <= self.initial <= self.max:
            raise ValueError("adaptive needs min <= initial <= max")
        return self


class IpGuard(Frozen):
    """Per client address, in this process, before any key lookup or signature check."""

    requests: int = Field(gt=0)
    per: Duration = 1.0
    burst: int | None = Field(default=None, gt=0)


class PressureConfig(Frozen):
    """Limits that follow model health: while the 95th percentile of time to first token
    (over every deployment, the last `window`) is above `ttft_p95_above` on any instance,
    each plan's rate limits are multiplied by its `scale` on every instance."""

    ttft_p95_above: Duration
    window: Duration = 10.0
    scale: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(min_length=1)


class ShapingConfig(Frozen):
    queue: QueueConfig = QueueConfig()
    pressure: PressureConfig | None = None
    adaptive: AdaptiveConfig | None = None  # off: limits are the max_concurrency values
    ip_guard: IpGuard | None = None
    # Requests in flight in this process at most (proxied ones); beyond: 503 at once.
    max_in_flight: int | None = Field(default=None, gt=0)


class EmbeddedMock(Frozen):
    """Run the built-in mock LLM inside ``serve`` (the bundled default does)."""

    enabled: bool = False
    listen: str = "127.0.0.1:9000"
    # More mock processes, one per address (one can be stopped alone: a region outage).
    also_listen: list[str] = []
    _listen = field_validator("listen")(_check_listen)

    @field_validator("also_listen")
    @classmethod
    def _more(cls, value: list[str]) -> list[str]:
        for address in value:
            _check_listen(address)
        return value


class LedgerConfig(Frozen):
    enabled: bool = True
    # Records wait here while the database is down and are replayed when it is back
    # (default: spool/ under $QUOTAGATE_DATA_DIR).
    spool_dir: str | None = None
    batch_size: int = Field(default=500, gt=0)
    flush_interval: Duration = 0.2


class AlertsConfig(Frozen):
    webhook_url: str | None = None
    # The HMAC key signing each delivery is read from this environment variable.
    secret_env: str = "QUOTAGATE_ALERT_SECRET"


class AccountingConfig(Frozen):
    # 402 insufficient_quota (the official SDKs never retry it), or 429 for clients
    # that only understand rate limits.
    exhausted_status: Literal[402, 429] = 402
    # A reservation not settled by then (its gateway died) is reaped and recorded
    # unsettled; keep it above the deployments' total timeout.
    reservation_ttl: Duration = 900.0
    # How long a response is kept for replay to a retry with the same Idempotency-Key.
    idempotency_ttl: Duration = 86400.0
    # How prompt tokens are estimated for the reservation: tiktoken (the `tiktoken`
    # extra, encodings already on disk), heuristic (~4 characters a token), or auto
    # (tiktoken when it can be loaded offline, else heuristic).
    estimator: Literal["auto", "tiktoken", "heuristic"] = "auto"
    ledger: LedgerConfig = LedgerConfig()
    alerts: AlertsConfig = AlertsConfig()


class AdminConfig(Frozen):
    # The admin API's own listener: keep it on loopback or a private network.
    enabled: bool = True
    listen: str = "127.0.0.1:8081"
    # A JWT from a trusted issuer (auth.jwt, or the built-in one) opens the admin API
    # when its scopes include this one; null: admin tokens only.
    jwt_scope: str | None = "quotagate:admin"
    _listen = field_validator("listen")(_check_listen)


class Policy(Frozen):
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    store: StoreConfig = StoreConfig()
    database: DatabaseConfig = DatabaseConfig()
    auth: AuthConfig = AuthConfig()
    models: dict[str, Model] = Field(min_length=1)
    plans: dict[str, Plan] = Field(min_length=1)
    global_limits: list[LimitRule] = []
    accounting: AccountingConfig = AccountingConfig()
    mock_llm: EmbeddedMock = EmbeddedMock()
    routes: dict[str, RouteAlias] = {}
    routing: RoutingConfig = RoutingConfig()
    shaping: ShapingConfig = ShapingConfig()

    @field_validator("routes")
    @classmethod
    def _route_paths(cls, value: dict[str, RouteAlias]) -> dict[str, RouteAlias]:
        for path in value:
            # An alias also serves <alias>/chat/completions (an SDK's base_url).
            served = {path, path.rstrip("/") + "/chat/completions"}
            if not path.startswith("/") or served & RESERVED_PATHS:
                raise ValueError(
                    f"route {path!r}: must start with / and not be a path of the gateway's own"
                )
        return value

    observability: ObservabilityConfig = ObservabilityConfig()

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> Policy:
        names = set(self.models)
        for name, model in self.models.items():
            for other in model.fallback:
                if other not in names or other == name:
                    raise ValueError(f"models.{name}.fallback: unknown model {other!r}")
            for alias in model.aliases:
                if alias in names:
                    raise ValueError(f"models.{name}.aliases: {alias!r} is a model of its own")
        if self.routing.cache.store == "redis" and self.store.url.startswith("memory://"):
            raise ValueError("routing.cache.store: redis needs a Redis store.url")
        aliases = [a for m in self.models.values() for a in m.aliases]
        if len(set(aliases)) != len(aliases):
            raise ValueError("models: one alias names two models")
        for i, rule in enumerate(self.global_limits):
            if rule.classes:
                raise ValueError(f"global_limits[{i}].classes: only plan limits take classes")
        pressure = self.shaping.pressure
        for plan_name in pressure.scale if pressure is not None else ():
            if plan_name not in self.plans:
                raise ValueError(f"shaping.pressure.scale: unknown plan {plan_name!r}")
        for plan_name, plan in self.plans.items():
            for model_name, chain in plan.fallbacks.items():
                for model_ in (model_name, *chain):
                    if model_ not in names:
                        raise ValueError(f"plans.{plan_name}.fallbacks: unknown model {model_!r}")
        return self

    @model_validator(mode="after")
    def _models_exist(self) -> Policy:
        for name, plan in self.plans.items():
            quotas = plan.quotas + ([plan.budget.as_quota()] if plan.budget else [])
            for quota in quotas:
                for model in (quota.model, _fallback(quota.on_exhausted)):
                    if model is not None and model not in self.models:
                        raise ValueError(f"plans.{name}: unknown model {model!r} in a quota")
                fallback = _fallback(quota.on_exhausted)
                if fallback is not None and "*" not in plan.models and fallback not in plan.models:
                    raise ValueError(
                        f"plans.{name}: fallback model {fallback!r} is not one of the plan's models"
                    )
        return self


def _fallback(action: object) -> str | None:
    return action.fallback if isinstance(action, Fallback) else None
