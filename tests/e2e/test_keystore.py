"""The key store on SQLite and on PostgreSQL: one test body for both.

Keys made by the CLI work through a running gateway until revoked, and neither the
database nor the gateway's debug log ever holds a key in plaintext.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import asyncpg
import openai
import pytest
from e2e_clients import (
    CHAT_MODEL,
    IssuedKey,
    KeyIssuer,
    assert_sdk_error,
    messages,
    poll_until_raises,
    sdk,
)

from harness import Gateway, policy

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def postgres_key_rows(schema: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return [tuple(r) for r in await conn.fetch(f'SELECT * FROM "{schema}".qg_api_keys')]
    finally:
        await conn.close()


def sqlite_key_rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return [tuple(r) for r in conn.execute("SELECT * FROM qg_api_keys")]


def key_rows(gateway: Gateway) -> list[tuple[object, ...]]:
    database = gateway.doc["database"]
    if "schema" in database:
        return asyncio.run(postgres_key_rows(database["schema"]))
    return sqlite_key_rows(Path(database["url"].removeprefix("sqlite+aiosqlite:///")))


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: str
) -> Iterator[KeyIssuer]:
    """Keys on a gateway backed by ``request.param``: the shared gateway is SQLite."""
    if request.param == "sqlite":
        yield request.getfixturevalue("keys")
        return
    schema = f"qg_test_{secrets.token_hex(6)}"
    doc = policy(upstream, database={"url": PG_URL, "schema": schema})
    gateway = Gateway(tmp_path_factory.mktemp("postgres"), doc)
    try:
        gateway.start()
        yield KeyIssuer(gateway)
    finally:
        gateway.stop()
        asyncio.run(drop_schema(schema))


def test_cli_key_works_until_revoked(store: KeyIssuer) -> None:
    key = store.issue("pro")
    with sdk(store.gateway, key.key) as client:
        completion = client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi"))
        assert completion.choices[0].message.content
        store.revoke(key)
        refused = poll_until_raises(
            lambda: client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi")),
            openai.AuthenticationError,
            within=3.0,
        )
    assert isinstance(refused, openai.AuthenticationError)
    assert_sdk_error(refused, 401, "invalid_api_key")


def test_no_plaintext_key_in_the_database_or_the_log(store: KeyIssuer) -> None:
    used = store.issue("pro")
    forged = IssuedKey(used.key_id, f"qg-{used.key_id}_{secrets.token_urlsafe(32)}")
    with sdk(store.gateway, used.key) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi"))
    with sdk(store.gateway, forged.key) as client, pytest.raises(openai.AuthenticationError):
        client.models.list(extra_headers={"x-request-id": "e2e-forged-key"})
    rows = key_rows(store.gateway)
    assert used.key_id in {row[0] for row in rows}  # the dump reads the right table
    dump = repr(rows)
    log = store.gateway.log_text()
    assert "e2e-forged-key" in log  # the debug log does record refused keys
    for key in [*store.issued, forged]:
        assert_nowhere(key, dump, "the key table")
        assert_nowhere(key, log, "the gateway log")


def assert_nowhere(key: IssuedKey, text: str, where: str) -> None:
    assert key.key not in text, f"key {key.key_id} in plaintext in {where}"
    assert key.secret_part not in text, f"secret of key {key.key_id} in {where}"


def test_sqlite_file_holds_no_key_secret(keys: KeyIssuer) -> None:
    """Below the table: every byte of the SQLite files, free pages and journal included."""
    keys.issue("pro")
    files = list(keys.gateway.tmp.glob("qg.db*"))
    assert files
    for path in files:
        content = path.read_bytes()
        for key in keys.issued:
            assert key.secret_part.encode() not in content, (path, key.key_id)
