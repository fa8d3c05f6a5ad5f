"""OAuth clients of the built-in issuer (client-credentials grant).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "qg_oauth_clients",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("qg_tenants.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("plan", sa.String(100), nullable=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_qg_oauth_clients_tenant", "qg_oauth_clients", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("qg_oauth_clients")
