"""Tenant time zone and billing day, credits, the usage ledger, alert deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("qg_tenants") as batch:  # batch: SQLite alters by copy
        batch.add_column(sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"))
        batch.add_column(sa.Column("billing_day", sa.Integer, nullable=False, server_default="1"))
    op.create_table(
        "qg_credits",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("qg_tenants.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("resource", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_qg_credits_tenant", "qg_credits", ["tenant_id"])
    op.create_table(
        "qg_ledger",
        sa.Column("request_id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("deployment", sa.String(500), nullable=True),
        sa.Column("endpoint", sa.String(50), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("denial_reason", sa.String(100), nullable=True),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.Column("reserved_tokens", sa.Integer, nullable=False),
        sa.Column("reserved_micros", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("ttfb_ms", sa.Float, nullable=True),
    )
    op.create_index("ix_qg_ledger_tenant_time", "qg_ledger", ["tenant_id", "created_at"])
    op.create_index("ix_qg_ledger_time", "qg_ledger", ["created_at"])
    op.create_table(
        "qg_alert_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("quota", sa.String(200), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("delivered", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_qg_alert_deliveries_alert", "qg_alert_deliveries", ["alert_id"])


def downgrade() -> None:
    op.drop_table("qg_alert_deliveries")
    op.drop_table("qg_ledger")
    op.drop_table("qg_credits")
    with op.batch_alter_table("qg_tenants") as batch:
        batch.drop_column("billing_day")
        batch.drop_column("timezone")
