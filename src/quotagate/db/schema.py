"""Tables: tenants and their API keys (SQLAlchemy 2 Core)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
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
    Index("ix_qg_api_keys_tenant", "tenant_id"),
)
