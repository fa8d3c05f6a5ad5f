"""Tables (SQLAlchemy 2 Core): tenants, keys, credits, the usage ledger, alert deliveries,
OAuth clients.

The Alembic migrations in ``db/migrations`` own the schema; these definitions are what
the code queries with and must match the newest revision.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

tenants = Table(
    "qg_tenants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("plan", String(100), nullable=False),
    Column("status", String(20), nullable=False, default="active"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Calendar quotas and budgets reset at midnight here; months on billing_day.
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("billing_day", Integer, nullable=False, server_default="1"),
)

api_keys = Table(
    "qg_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # the visible key id
    Column("tenant_id", ForeignKey("qg_tenants.id"), nullable=False),
    Column("name", String(200), nullable=True),
    Column("user_id", String(200), nullable=True),
    Column("key_hash", String(64), nullable=False),  # HMAC-SHA256, hex
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # Emergency bypass: a critical internal key skips every limit, quota and budget
    # (still authenticated and recorded). Set through the admin API, audited.
    Column("bypass_limits", Boolean, nullable=False, server_default=false()),
    Index("ix_qg_api_keys_tenant", "tenant_id"),
)

# Per-tenant changes to a plan's quotas and budget:
#   kind "override": replaces the plan's amount while valid (the newest one wins);
#   kind "topup" / "burst": adds to it while valid (a burst credit is one that expires
#   soon; both are one-off, not renewed each period).
# resource: "budget" (amount in micro-units of the currency) or "tokens" (every
# tenant-scoped token quota).
credits = Table(
    "qg_credits",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", ForeignKey("qg_tenants.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("resource", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("note", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_qg_credits_tenant", "tenant_id"),
)

# One row per request (idempotent by request id). Amounts are what was settled; for an
# `unsettled` row (its gateway died) they are what had been reserved.
ledger = Table(
    "qg_ledger",
    metadata,
    Column("request_id", String(40), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("tenant_id", String(32), nullable=True),
    Column("key_id", String(32), nullable=True),
    Column("user_id", String(200), nullable=True),
    Column("model", String(200), nullable=True),
    Column("deployment", String(500), nullable=True),
    Column("endpoint", String(50), nullable=False),
    # ok | error | denied | client_disconnected | unsettled | replayed
    Column("status", String(24), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("denial_reason", String(100), nullable=True),
    Column("stream", Boolean, nullable=False, default=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("reserved_tokens", Integer, nullable=False, default=0),
    Column("reserved_micros", BigInteger, nullable=False, default=0),
    Column("duration_ms", Float, nullable=False, default=0.0),
    Column("ttfb_ms", Float, nullable=True),
    Index("ix_qg_ledger_tenant_time", "tenant_id", "created_at"),
    Index("ix_qg_ledger_time", "created_at"),
)

# Each attempt to deliver a quota/budget alert webhook.
alert_deliveries = Table(
    "qg_alert_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", String(64), nullable=False),  # same for every attempt of one alert
    Column("tenant_id", String(32), nullable=False),
    Column("quota", String(200), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("url", String(500), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", String(500), nullable=True),
    Column("delivered", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_qg_alert_deliveries_alert", "alert_id"),
)

# Clients of the built-in OAuth2 issuer. The secret is stored like an API key: an
# HMAC-SHA256 of the whole secret under the server secret, never the secret itself.
# plan: the plan its tokens carry; none: the tenant's plan when the token is issued.
oauth_clients = Table(
    "qg_oauth_clients",
    metadata,
    Column("id", String(32), primary_key=True),  # the client_id
    Column("tenant_id", ForeignKey("qg_tenants.id"), nullable=False),
    Column("name", String(200), nullable=True),
    Column("plan", String(100), nullable=True),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_qg_oauth_clients_tenant", "tenant_id"),
)

# Operators' credentials for the admin API (HMAC-SHA256 with the server secret, like
# API keys); the plaintext is shown once at creation.
admin_tokens = Table(
    "qg_admin_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Every change made through the admin API or the CLI: who, what, when, before and
# after (JSON, never a secret: keys and tokens appear by id only).
audit_log = Table(
    "qg_audit_log",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("before", Text, nullable=True),
    Column("after", Text, nullable=True),
    Index("ix_qg_audit_log_at", "at"),
)
