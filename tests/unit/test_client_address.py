"""Which address is the client's when X-Forwarded-For is present."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from quotagate.pipeline.client_address import client_address

LB = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "header", "trusted", "client"),
    [
        # Untrusted peer: the header is the client's own claim, ignored.
        ("203.0.113.9", b"1.2.3.4", LB, "203.0.113.9"),
        ("203.0.113.9", b"1.2.3.4", [], "203.0.113.9"),
        # Through the load balancer: the hop it saw.
        ("10.0.0.5", b"198.51.100.7", LB, "198.51.100.7"),
        # A client's forged left part is skipped: the right-most untrusted hop wins.
        ("10.0.0.5", b"6.6.6.6, 198.51.100.7", LB, "198.51.100.7"),
        # Chained trusted proxies are walked past.
        ("10.0.0.5", b"198.51.100.7, 10.1.2.3, 10.9.9.9", LB, "198.51.100.7"),
        # Garbage ends the walk at the last good address.
        ("10.0.0.5", b"198.51.100.7, not-an-ip", LB, "10.0.0.5"),
        ("10.0.0.5", b"bogus, 10.2.2.2", LB, "10.2.2.2"),
        ("fd00::1", b"2001:db8::7", LB, "2001:db8::7"),
        ("10.0.0.5", b"", LB, "10.0.0.5"),
    ],
)
def test_client_address(peer: str, header: bytes, trusted: list, client: str) -> None:  # type: ignore[type-arg]
    assert client_address(peer, header, trusted) == client
