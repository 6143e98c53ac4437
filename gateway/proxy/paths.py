"""Mapping a public ``/api/v1/...`` path to the backend's ``/v1/...`` path, once, safely.

The backend trusts the gateway, so the gateway must make sure that nothing a client writes in a
URL can reach a backend route outside ``/v1/`` (``/internal/auth/validate`` above all) or a path
other than the one the internal token is bound to. Rather than normalising a hostile path into a
harmless one, and so having two parsers that must agree, anything that *could* be read two ways
is refused:

- dot segments (``.``, ``..``) — RFC 3986 §5.2.4 lets clients and servers remove them, so
  ``/api/v1/../../internal/auth/validate`` must never leave the gateway;
- percent-encoded ``.``, ``/``, ``\\`` and ``%`` (``%2e``, ``%2f``, ``%5c``, ``%25``): one decoding
  more or less on either side would turn them into the above;
- backslashes (some servers read them as ``/``), empty segments (``//``, a trailing ``/``),
  ``;`` path parameters, control characters and bytes that are not UTF-8;
- percent-encoded ``?`` and ``#`` (``%3f``, ``%23``): decoded, they would end the path inside
  the internal token's ``htu``, which is a path and nothing else.

A raw path longer than :data:`MAX_PATH_BYTES` is refused with 414: the decoded path travels
inside the internal token, and the token must stay under the verifier's size limit
(``internal_auth.MAX_TOKEN_LENGTH``) or a valid access token would earn a 401. JSON-escaping the
decoded path never makes it longer than its percent-encoded form (``%22`` -> ``\"``, four
escaped UTF-8 bytes -> one surrogate pair of 12 characters), so the raw length bounds it.

The backend receives the raw (still percent-encoded) path, and the internal token's ``htu`` is that
path decoded exactly the way uvicorn decodes it into ``scope["path"]`` (``urllib.parse.unquote``),
so the binding checked by the backend matches what it serves.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.errors import BadRequest, NotFound, URITooLong

#: Longest raw public path proxied (bytes, before decoding, query string excluded).
MAX_PATH_BYTES = 2048
PUBLIC_PREFIX = "/api/v1/"
BACKEND_PREFIX = "/v1/"

# Auth and admin (the audit query) routes are the gateway's own: a method or a path under them
# that they do not define must not fall through to a backend, where it would mean something else.
_GATEWAY_ONLY = ("auth", "admin")

# RFC 3986 §3.3 pchar minus ";" (matrix parameters) and with "%" allowed only as an escape.
_RAW_SEGMENT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})+")
_FORBIDDEN_ESCAPES = re.compile(r"%(?:2[eEfF35]|3[fF]|5[cC]|[01][0-9A-Fa-f]|7[fF])")


@dataclass(frozen=True, slots=True)
class BackendPath:
    raw: str  # what goes on the wire to the backend (percent-encoding kept)
    path: str  # what the backend's ASGI scope["path"] will be; the internal token's htu

    @property
    def rule_path(self) -> str:
        """What routes and rules of ``GATEWAY_CONFIG`` match: ``htu`` minus ``/v1`` (decoded,
        canonical; never the raw path, the query or a header)."""
        return self.path[len(BACKEND_PREFIX) - 1 :]


@functools.lru_cache(maxsize=4096)
def backend_path(raw_path: bytes | None, path: str) -> BackendPath:
    """Return the backend path for a public request path, or raise 400/404/414.

    ``raw_path`` is ASGI ``scope["raw_path"]`` (``None`` when the server does not provide it, in
    which case the decoded ``path`` is all there is and must itself be plain).

    Pure, so its results are memoised (a client asks for the same few paths again and again);
    refused paths raise and are never memoised.
    """
    if len(raw_path if raw_path is not None else path.encode("utf-8")) > MAX_PATH_BYTES:
        raise URITooLong()
    try:
        raw = raw_path.decode("ascii") if raw_path is not None else path
    except UnicodeDecodeError:
        raise BadRequest("malformed request path") from None
    if not raw.startswith(PUBLIC_PREFIX):
        raise NotFound()
    rest = raw[len(PUBLIC_PREFIX) :]
    if not rest:
        raise NotFound()
    if "\\" in rest or _FORBIDDEN_ESCAPES.search(rest):
        raise BadRequest("malformed request path")
    segments = rest.split("/")
    for segment in segments:
        if not segment:
            # "//" or a trailing "/": a backend redirect would answer with its own internal URL.
            raise NotFound()
        if segment in (".", "..") or not _RAW_SEGMENT.fullmatch(segment):
            raise BadRequest("malformed request path")
    if segments[0] in _GATEWAY_ONLY:
        raise NotFound()
    wire = BACKEND_PREFIX + rest
    try:
        decoded = unquote(wire, errors="strict") if "%" in wire else wire
    except UnicodeDecodeError:
        raise BadRequest("malformed request path") from None
    # Paranoia: decoding must not have produced anything the checks above exist to stop.
    if "/../" in decoded or "/./" in decoded or decoded.endswith(("/..", "/.")) or "\\" in decoded:
        raise BadRequest("malformed request path")
    return BackendPath(raw=wire, path=decoded)
