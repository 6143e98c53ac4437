"""Who is calling with an access token: ``Authorization: Bearer`` or ``Authorization: DPoP``,
verified, session not revoked, not older than its user's last account change.

One implementation for the proxy and for the auth routes that need an access token (sessions,
logout-all), with the ``WWW-Authenticate`` challenges RFC 6750 §3 and RFC 9449 §7.1 ask a
protected resource to send with its 401:

- no credentials, or an unknown scheme: ``Bearer, DPoP algs="..."`` with no error code (§3.1: a
  request that carried no token gets no error attribute; both accepted schemes are offered);
- a token that fails verification, whose session was revoked, or issued before its user's token
  epoch (account disabled, password or roles changed): ``Bearer error="invalid_token"`` (or
  ``DPoP error="invalid_token", algs=...`` for the DPoP scheme);
- a DPoP-bound token (``cnf.jkt``) sent as ``Bearer``: refused (RFC 9449 §7.2), or a stolen bound
  token would work without its key;
- ``DPoP <token>``: a bound token only, with a ``DPoP`` proof for this request signed by the key
  the token names (:mod:`gateway.dpop`); its ``jti`` is claimed in Redis last, after the
  revocation check.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence

from gateway.auth.tokens import AccessClaims
from gateway.dpop import ALGS_PARAM, DPoP, challenge
from gateway.errors import InvalidToken, SessionRevoked, Unauthorized

__all__ = [
    "CHALLENGE",
    "INVALID_TOKEN_CHALLENGE",
    "authenticate",
    "authenticate_request",
    "bearer_token",
]

#: RFC 6750 §3 and RFC 9449 §7.1: the challenge for a request without usable credentials.
CHALLENGE = f'Bearer, DPoP algs="{ALGS_PARAM}"'
#: RFC 9449 §7.1: an invalid, revoked or unbound token sent with the DPoP scheme.
DPOP_INVALID_TOKEN_CHALLENGE = challenge("invalid_token")
#: RFC 6750 §3.1: the challenge for an expired, revoked, malformed or otherwise invalid token.
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'

_AUTHORIZATION = b"authorization"


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The token of ``Authorization: Bearer <token>`` in ASGI ``headers``, else 401."""
    value: bytes | None = None
    for name, raw in headers:
        if name == _AUTHORIZATION:
            value = raw
            break
    if value is None:
        raise Unauthorized(headers={"WWW-Authenticate": CHALLENGE})
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    # The auth scheme is case-insensitive (RFC 9110 §11.1).
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(headers={"WWW-Authenticate": CHALLENGE})
    return token


def authenticate(
    headers: Iterable[tuple[bytes, bytes]],
    verify: Callable[[str], AccessClaims],
    revoked: Container[str],
    token_denied: Callable[[str, int], bool] | None = None,
) -> AccessClaims:
    """The verified claims of the caller's access token; 401 if absent, invalid or revoked.

    ``verify`` checks signature, algorithm, type, issuer, audience and expiry (it raises an
    :class:`~gateway.errors.Unauthorized`); ``revoked`` is the local set of revoked sessions
    (no I/O), checked on every call so a logged-out session's access tokens die at once;
    ``token_denied(sub, iat)`` is :meth:`gateway.sessions.epochs.UserEpochs.token_denied` (no I/O
    either).
    """
    token = bearer_token(headers)
    try:
        claims = verify(token)
    except Unauthorized as exc:
        exc.headers.setdefault("WWW-Authenticate", INVALID_TOKEN_CHALLENGE)
        raise
    if claims.jkt is not None:
        raise InvalidToken(
            "this token is bound to a key: send it with the DPoP scheme and a proof",
            headers={"WWW-Authenticate": DPOP_INVALID_TOKEN_CHALLENGE},
        )
    if claims.sid in revoked or (token_denied is not None and token_denied(claims.sub, claims.iat)):
        raise SessionRevoked(headers={"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})
    return claims


async def authenticate_request(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    method: str,
    path: str,
    verify: Callable[[str], AccessClaims],
    revoked: Container[str],
    dpop: DPoP,
    token_denied: Callable[[str, int], bool] | None = None,
) -> AccessClaims:
    """:func:`authenticate`, or for ``Authorization: DPoP`` the bound token and its proof.

    ``path`` is the request path as the client sent it (what the proof's ``htu`` names).
    """
    value = next((raw for name, raw in headers if name == _AUTHORIZATION), b"")
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "dpop" or not token:
        return authenticate(headers, verify, revoked, token_denied)
    try:
        claims = verify(token)
    except Unauthorized as exc:
        exc.headers.setdefault("WWW-Authenticate", DPOP_INVALID_TOKEN_CHALLENGE)
        raise
    if claims.jkt is None:
        raise InvalidToken(headers={"WWW-Authenticate": DPOP_INVALID_TOKEN_CHALLENGE})
    if claims.sid in revoked or (token_denied is not None and token_denied(claims.sub, claims.iat)):
        raise SessionRevoked(headers={"WWW-Authenticate": DPOP_INVALID_TOKEN_CHALLENGE})
    await dpop.for_resource(
        [raw.decode("latin-1") for name, raw in headers if name == b"dpop"],
        method=method,
        path=path,
        access_token=token,
        jkt=claims.jkt,
    )
    return claims
