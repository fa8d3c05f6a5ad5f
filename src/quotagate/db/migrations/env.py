"""Alembic environment: runs on the connection quotagate hands it (see db.migrate)."""

from __future__ import annotations

from alembic import context

from quotagate.db.migrate import VERSION_TABLE
from quotagate.db.schema import metadata


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
