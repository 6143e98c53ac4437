"""Which headers cross the gateway, in each direction, and which ones the gateway sets itself.

Request (client -> backend): end-to-end headers pass; hop-by-hop headers stop here (RFC 9110
§7.6.1: ``Connection``, the ones it names, ``Keep-Alive``, ``Proxy-Connection``, ``TE``,
``Transfer-Encoding``, ``Upgrade``, plus ``Proxy-Authorization``/``Proxy-Authenticate`` which are
for this hop only, RFC 9110 §11.7). The backend trusts ``X-Internal-Auth`` and may read
``X-User-*``/``X-Forwarded-*``/``Forwarded``, so any a client sent is dropped and only the gateway's
own are sent. The client's ``Authorization`` and ``Cookie`` carry public credentials that the
backend must never see (DESIGN: public tokens never reach the backend).

Response (backend -> client): hop-by-hop headers stop here too, and nothing internal
(``X-Internal-Auth``, ``X-User-*``) leaves the internal network, whatever the backend does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Header = tuple[bytes, bytes]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Dropped from requests on top of HOP_BY_HOP. Host and Content-Length are set by the HTTP client
# for the backend connection; Expect was answered by our own server already.
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"authorization",
    b"cookie",
    b"forwarded",
    b"x-internal-auth",
    b"x-request-id",
    b"x-real-ip",
}

# Dropped from responses on top of HOP_BY_HOP. Our own server writes Date and Server, and
# Set-Cookie from the backend could plant cookies on the gateway's origin.
_RESPONSE_DROP = HOP_BY_HOP | {b"x-internal-auth", b"date", b"server", b"set-cookie"}


def _connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(names)


def _is_internal(name: bytes) -> bool:
    return name.startswith((b"x-user-", b"x-forwarded-"))


def request_headers(
    headers: Sequence[Header],
    *,
    client_ip: str,
    proto: str,
    host: str,
    request_id: str,
    internal_token: str,
) -> list[tuple[str, str]]:
    """Headers for the backend request, from the client's ASGI headers (lower-case names)."""
    named = _connection_tokens(headers)
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name in _REQUEST_DROP or name in named or _is_internal(name):
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    out.append(("x-forwarded-for", client_ip))
    out.append(("x-forwarded-proto", proto))
    if host:
        out.append(("x-forwarded-host", host))
    out.append(("x-request-id", request_id))
    out.append(("x-internal-auth", internal_token))
    return out


def response_headers(headers: Iterable[Header]) -> list[Header]:
    """Headers for the client from the backend's raw response headers (any case)."""
    pairs = [(name.lower(), value) for name, value in headers]
    named = _connection_tokens(pairs)
    return [
        (name, value)
        for name, value in pairs
        if name not in _RESPONSE_DROP and name not in named and not name.startswith(b"x-user-")
    ]


def client_ip(peer: str | None, forwarded_for: bytes | None, trusted: Sequence[Network]) -> str:
    """The address to report in ``X-Forwarded-For``.

    ``X-Forwarded-For`` from the client is believed only when the direct peer is a configured
    trusted proxy (``TRUSTED_PROXIES``); then the right-most untrusted hop is the client, since
    every hop to the left of it could have been written by the client itself.
    """
    address = peer or "unknown"
    if not trusted or not forwarded_for or not _trusted(address, trusted):
        return address
    hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop if _is_ip(hop) else address
    return hops[0] if hops and _is_ip(hops[0]) else address


def request_scheme(
    scheme: str, peer: str | None, forwarded_proto: bytes | None, trusted: Sequence[Network]
) -> str:
    """``http`` or ``https`` as the client used it: a trusted proxy that terminated TLS says so
    in ``X-Forwarded-Proto``; from anyone else the header is ignored."""
    if forwarded_proto and peer and trusted and _trusted(peer, trusted):
        proto = forwarded_proto.split(b",")[0].strip().lower()
        if proto in (b"http", b"https"):
            return proto.decode("ascii")
    return scheme


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
