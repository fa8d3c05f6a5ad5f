"""Bring a database to the newest schema with Alembic (the migrations own the schema).

Run by the CLI and by ``serve`` before traffic; on PostgreSQL an advisory lock makes
concurrent starts of several instances take turns.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

_LOCK_ID = 0x7167_6174  # "qgat": the advisory lock quotagate's migrations hold
VERSION_TABLE = "qg_alembic_version"  # not "alembic_version": the database may be shared


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", "quotagate.db:migrations")
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection) -> None:
    """Upgrade to head on ``connection`` (sync: called through ``run_sync``)."""
    config = _config(connection)
    if current(connection) == ScriptDirectory.from_config(config).get_current_head():
        return  # the common case: already there, nothing to lock or write
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    command.upgrade(config, "head")


def current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()
