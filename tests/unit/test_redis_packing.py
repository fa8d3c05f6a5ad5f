"""The Redis store's connections pack commands with hiredis (store/redis.py
``hiredis_packed``): the bytes must be exactly those redis-py's own Python packer
writes, for every kind of argument the store and redis-py's handshakes send."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Connection, ConnectionPool, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.exceptions import DataError

from quotagate.store.redis import connect, hiredis_packed

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "3f2a" * 10, 2, "qg:rl:{t:acme}:k", b"qg:rs:{t:acme}", "g", 6000.0, 100, 1),
    ("EVALSHA", "ab", 1, "k", "c", 1000, 50, "c:1763942400000000:1764028800000000:1:2"),
    ("EVALSHA", "ab", 1, "k", 5, "", 1 / 3 * 1e6, 1e22, 2.5e-7, -1, 0, 10**15),
    ("SET", "qg:idem:{t:a}:x", b"p\x00\xff\x10fingerprint", "NX", "GET", "PX", 60000),
    ("SCRIPT LOAD", "return 1"),  # a command name of two words
    (b"CLIENT SETNAME", "quotagate"),
    ("GET", "clé-ünïcode"),
    ("SET", bytearray(b"k"), memoryview(b"v")),  # redis-py takes these too
    ("CONFIG\tGET", "maxmemory"),  # any whitespace splits a command name
    ("PING",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_the_same_bytes_as_redis_py_packs(command: tuple[Any, ...]) -> None:
    python, packed = Connection(), hiredis_packed(Connection)()
    assert b"".join(packed.pack_command(*command)) == b"".join(python.pack_command(*command))


def test_an_argument_redis_py_refuses_is_refused() -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", None)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        hiredis_packed(Connection)().pack_command("SET", "k", None)


async def test_the_store_connects_with_the_packing_subclass_of_the_urls_class() -> None:
    """Plain and TLS URLs keep their connection class (and its TLS), packed by hiredis."""
    for url, base in (
        ("redis://127.0.0.1:1/0", Connection),
        ("rediss://127.0.0.1:1/0", SSLConnection),
    ):
        client = connect(url, 1.0)
        pool: ConnectionPool = client.connection_pool  # type: ignore[union-attr]
        assert issubclass(pool.connection_class, base)
        assert pool.connection_class is hiredis_packed(base)
        await client.aclose()


async def test_a_url_with_another_encoding_keeps_redis_pys_packer() -> None:
    client = connect("redis://127.0.0.1:1/0?encoding=latin-1", 1.0)
    assert client.connection_pool.connection_class is Connection  # type: ignore[union-attr]
    await client.aclose()


async def test_a_cluster_client_packs_with_hiredis_on_its_startup_nodes() -> None:
    """The nodes it discovers get the same class (tests/integration/store/
    test_settle_batching.py checks them on a running Cluster)."""
    client = connect("redis+cluster://127.0.0.1:1", 1.0)
    assert isinstance(client, RedisCluster)
    packed = hiredis_packed(Connection)
    assert client.nodes_manager.connection_kwargs["connection_class"] is packed
    assert [n.connection_class for n in client.nodes_manager.startup_nodes.values()] == [packed]
    await client.aclose()
