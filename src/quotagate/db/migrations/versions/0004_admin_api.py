"""Admin API: operators' tokens, the audit log, the emergency bypass of a key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("qg_api_keys") as batch:  # batch: SQLite alters by copy
        batch.add_column(
            sa.Column("bypass_limits", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_table(
        "qg_admin_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "qg_audit_log",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("before", sa.Text, nullable=True),
        sa.Column("after", sa.Text, nullable=True),
    )
    op.create_index("ix_qg_audit_log_at", "qg_audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_qg_audit_log_at", "qg_audit_log")
    op.drop_table("qg_audit_log")
    op.drop_table("qg_admin_tokens")
    with op.batch_alter_table("qg_api_keys") as batch:
        batch.drop_column("bypass_limits")
