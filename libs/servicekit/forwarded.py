"""Who the client is and how it connected, when proxies may stand in between: one set of rules.

Every consumer (the login and refresh rate limits, the IP stored with each session, the
``X-Forwarded-For`` the gateway sends on, the HTTPS check behind ``Strict-Transport-Security``)
reads the client through these functions, so a rule cannot be loose in one place and strict in
another.

The rules, each of which stops an attack:

- ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only when the direct TCP peer is a
  configured trusted proxy (``TRUSTED_PROXIES``); otherwise any client could pick its own address
  and never be rate limited.
- Behind trusted proxies the client is the **right-most untrusted hop**: every hop to its left
  could have been written by the client itself (RFC 7239 §5.2 says the same of ``Forwarded``).
- Several ``X-Forwarded-For`` fields are one list in order (RFC 9110 §5.3): reading only the
  first would let a client's own field shadow the one its proxy appended.
- That hop must parse as an IP address. Anything else (a name, ``ip:port``, garbage, an empty
  list) falls back to the peer: a non-address would otherwise become a rate-limit key the client
  can change at will.
- Addresses from the header come back in one canonical spelling (``ipaddress``), so
  ``2001:DB8::1`` and ``2001:db8:0::1`` are one client, not two rate-limit buckets (the peer
  address comes from the socket, already canonical).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = [
    "UNKNOWN",
    "Network",
    "client_and_scheme",
    "client_ip",
    "forwarded_for",
    "is_trusted",
    "request_scheme",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Header = tuple[bytes, bytes]

#: What :func:`client_ip` reports when the server was not told the peer (a Unix socket).
UNKNOWN = "unknown"

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"


def forwarded_for(headers: Iterable[Header]) -> bytes | None:
    """Every ``X-Forwarded-For`` field of ASGI ``headers`` (lower-case names), joined in order."""
    values = [value for name, value in headers if name == _XFF]
    if not values:
        return None
    return b",".join(values)


def client_ip(peer: str | None, forwarded: bytes | None, trusted: Sequence[Network]) -> str:
    """The client's address: the peer, or the right-most untrusted ``X-Forwarded-For`` hop when
    the peer is a trusted proxy (see the module docstring for why each rule is there).

    ``forwarded`` is :func:`forwarded_for` of the request headers.
    """
    # The peer comes from the socket, already in canonical form; it is parsed only when it may
    # be a trusted proxy (this runs on every proxied request).
    if not trusted or not forwarded or not peer or not is_trusted(peer, trusted):
        return peer or UNKNOWN
    fallback = peer
    hops = [h.strip() for h in forwarded.decode("latin-1").split(",")]
    hops = [h for h in hops if h]
    if not hops:
        return fallback
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return _canonical(hop) or fallback
    # Every hop is one of our proxies: the left-most one is as far back as the chain goes.
    return _canonical(hops[0]) or fallback


def client_and_scheme(
    peer: str | None, scheme: str, headers: Iterable[Header], trusted: Sequence[Network]
) -> tuple[str, str]:
    """:func:`client_ip` and :func:`request_scheme` of one request's ASGI ``headers``.

    With no trusted proxy configured (or a peer that is not one) no header is read at all: the
    answer is the peer and the server's scheme, whatever the client sent.
    """
    if not trusted or not peer or not is_trusted(peer, trusted):
        return peer or UNKNOWN, scheme
    proto = None
    for name, value in headers:
        if name == _XFP:
            proto = value
            break
    return (
        client_ip(peer, forwarded_for(headers), trusted),
        request_scheme(scheme, peer, proto, trusted),
    )


def request_scheme(
    scheme: str, peer: str | None, forwarded_proto: bytes | None, trusted: Sequence[Network]
) -> str:
    """``http`` or ``https`` as the client used it: a trusted proxy that terminated TLS says so
    in ``X-Forwarded-Proto``; from anyone else the header is ignored."""
    if forwarded_proto and peer and trusted and is_trusted(peer, trusted):
        proto = forwarded_proto.split(b",")[0].strip().lower()
        if proto in (b"http", b"https"):
            return proto.decode("ascii")
    return scheme


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    """Whether ``address`` is an IP inside one of ``trusted`` (a non-address never is)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def _canonical(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
