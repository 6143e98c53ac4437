"""Which headers cross the gateway, in each direction, and which ones the gateway sets itself.

Request (client -> backend): end-to-end headers pass; hop-by-hop headers stop here (RFC 9110
§7.6.1: ``Connection``, the ones it names, ``Keep-Alive``, ``Proxy-Connection``, ``TE``,
``Transfer-Encoding``, ``Upgrade``, plus ``Proxy-Authorization``/``Proxy-Authenticate`` which are
for this hop only, RFC 9110 §11.7). The backend trusts ``X-Internal-Auth`` and may read
``X-User-*``/``X-Forwarded-*``/``Forwarded``, so any a client sent is dropped and only the gateway's
own are sent (the address in ``X-Forwarded-For`` comes from :func:`servicekit.forwarded.client_ip`,
the one set of rules for it). The client's ``Authorization`` and ``Cookie`` carry public
credentials that the backend must never see (docs/ARCHITECTURE.md: public tokens never reach a
service).

Response (backend -> client): hop-by-hop headers stop here too, and nothing internal
(``X-Internal-Auth``, ``X-User-*``) leaves the internal network, whatever the backend does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Header = tuple[bytes, bytes]

INTERNAL_AUTH = b"x-internal-auth"

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
    # a DPoP proof is for the gateway, the resource server the client talks to (RFC 9449 §4.3);
    # the backend trusts the internal token, and a single-use proof is credential material too
    b"dpop",
    b"cookie",
    b"forwarded",
    b"x-internal-auth",
    b"x-request-id",
    b"x-real-ip",
    # the gateway sends its own trace context (servicekit.tracing), never the client's
    b"traceparent",
    b"tracestate",
}

# Dropped from responses on top of HOP_BY_HOP. Our own server writes Date and Server,
# Set-Cookie from the backend could plant cookies on the gateway's origin, and the gateway's edge
# sets X-Request-Id itself (the backend echoes the one it was given).
_RESPONSE_DROP = HOP_BY_HOP | {
    b"x-internal-auth",
    b"date",
    b"server",
    b"set-cookie",
    b"x-request-id",
}


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
    host: bytes,
    request_id: str,
    internal_token: str,
) -> list[Header]:
    """Headers for the backend request, from the client's ASGI headers (lower-case names)."""
    named = _connection_tokens(headers)
    out: list[Header] = []
    for header in headers:
        name = header[0]
        if name in _REQUEST_DROP or name in named or _is_internal(name):
            continue
        out.append(header)
    out.append((b"x-forwarded-for", client_ip.encode("latin-1")))
    out.append((b"x-forwarded-proto", proto.encode("latin-1")))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"x-request-id", request_id.encode("latin-1")))
    out.append((INTERNAL_AUTH, internal_token.encode("ascii")))
    return out


def response_headers(headers: Iterable[Header]) -> list[Header]:
    """Headers for the client from the backend's raw response headers (any case).

    One pass (it runs on every proxied response); the headers a ``Connection`` header names are
    removed afterwards, since it may come after them.
    """
    out: list[Header] = []
    named: set[bytes] | None = None
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == b"connection":
            named = named or set()
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
        elif name not in _RESPONSE_DROP and not name.startswith(b"x-user-"):
            out.append((name, value))
    if named:
        out = [(name, value) for name, value in out if name not in named]
    return out
