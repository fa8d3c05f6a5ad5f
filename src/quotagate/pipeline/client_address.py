"""The client's address: the socket peer, or what trusted proxies say it is.

``X-Forwarded-For`` is read only when the peer is one of ``server.trusted_proxies``;
then the header is walked from the right (the hop nearest the gateway), skipping
trusted proxies, and the first other address is the client. A malformed entry ends
the walk at the last address known good: a client cannot pick its own per-IP counter
by sending the header itself, through a trusted proxy or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

Networks = Sequence[IPv4Network | IPv6Network]


def _trusted(address: str, trusted: Networks) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(peer: str, forwarded_for: bytes, trusted: Networks) -> str:
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for.decode("latin-1").split(",")):
        candidate = hop.strip()
        try:
            ip_address(candidate)
        except ValueError:
            break
        client = candidate
        if not _trusted(candidate, trusted):
            break
    return client
