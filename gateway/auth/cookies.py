"""The refresh cookie and the Origin check that guards cookie-authenticated requests.

The refresh token lives only in an ``HttpOnly`` cookie (script cannot read it, so XSS cannot
steal it), ``Secure`` (``COOKIE_SECURE=false`` is the development switch for plain-HTTP
localhost) and ``SameSite=Strict``.

Cookie tossing: a site on a sibling subdomain can plant a cookie of the same name with
``Domain=`` and a narrower ``Path``, and the browser sends both. Only the ``__Host-`` prefix stops
that (RFC 6265bis §4.1.3.2: no ``Domain``, ``Secure``, ``Path=/``, so only this host can set it),
so whenever the cookie is ``Secure`` it is ``__Host-tg_refresh`` with ``Path=/``. The price is a
wider path: the cookie also travels with proxied calls, where the proxy drops ``Cookie`` before
the backend. Without ``Secure`` (plain-HTTP localhost only) no prefix is possible: the cookie is
``tg_refresh`` on ``Path=/api/v1/auth``. In both modes a request carrying the refresh cookie
twice is refused: one of the two was planted.

SameSite is not enough on its own (same-site sibling subdomains, older browsers), so refresh and
logout also require an ``Origin`` (or, when a browser omits it, ``Referer``) on the allowlist
(OWASP CSRF cheat sheet, "Verifying origin with standard headers").
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import Forbidden, InvalidToken

#: The cookie's name without ``Secure`` (plain-HTTP localhost development only).
REFRESH_COOKIE = "tg_refresh"
#: The cookie's name whenever it is ``Secure``: the prefix makes browsers refuse planted copies.
HOST_REFRESH_COOKIE = "__Host-" + REFRESH_COOKIE
COOKIE_PATH = "/api/v1/auth"


_LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]"}


def cookie_secure(request: Request, configured: bool) -> bool:
    """``Secure`` unless COOKIE_SECURE=false *and* the request is for localhost.

    The development switch cannot strip ``Secure`` from a cookie served under a real host name,
    so a misconfigured production deployment still never sends the refresh token in clear.
    """
    if configured:
        return True
    host = request.headers.get("host", "").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name not in _LOCAL_HOSTS


def refresh_cookie_name(secure: bool) -> str:
    return HOST_REFRESH_COOKIE if secure else REFRESH_COOKIE


def _name_and_path(secure: bool) -> tuple[str, str]:
    # __Host- requires Path=/ (RFC 6265bis §4.1.3.2); a browser drops it otherwise.
    return (HOST_REFRESH_COOKIE, "/") if secure else (REFRESH_COOKIE, COOKIE_PATH)


def set_refresh_cookie(response: Response, token: str, *, max_age: int, secure: bool) -> None:
    name, path = _name_and_path(secure)
    response.set_cookie(
        name, token, max_age=max_age, path=path, secure=secure, httponly=True, samesite="strict"
    )
    if secure:
        _clear_legacy(response)


def clear_refresh_cookie(response: Response, *, secure: bool) -> None:
    name, path = _name_and_path(secure)
    response.delete_cookie(name, path=path, secure=secure, httponly=True, samesite="strict")
    if secure:
        _clear_legacy(response)


def _clear_legacy(response: Response) -> None:
    # The unprefixed cookie of earlier releases is never read in Secure mode; let it go.
    response.delete_cookie(
        REFRESH_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict"
    )


def read_refresh_cookie(request: Request, *, secure: bool) -> str | None:
    """The refresh token from this mode's cookie; 401 (cookie cleared) if sent twice."""
    name = refresh_cookie_name(secure)
    values = [
        value.strip()
        for header in request.headers.getlist("cookie")
        for key, _, value in (pair.partition("=") for pair in header.split(";"))
        if key.strip() == name
    ]
    if len(values) > 1:
        raise InvalidToken(clear_cookie=True)
    return values[0] or None if values else None


def request_origin(request: Request) -> str | None:
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return origin
    referer = request.headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    return None


#: The 403 for a cookie-mode refresh or logout without any ``Origin``: almost always an API
#: client (curl, a script), which is not cross-site at all, so the answer says what works.
NO_ORIGIN_MESSAGE = (
    "refresh and logout with the refresh cookie need the Origin of an allowed browser page; "
    "an API client logs in with a DPoP proof and sends its key-bound refresh token as JSON "
    '{"refresh_token": ...} with a DPoP proof (tokengate client, tokengate_client.DPoPAuth)'
)


def check_origin(request: Request, allowed: tuple[str, ...]) -> None:
    """Reject a cookie-authenticated call that does not come from an allowed origin (403).

    The rule stays whoever calls: the cookie is an ambient credential, and an unbound refresh
    token is never handed out in a body instead. Only the message differs, so that a client
    without ``Origin`` learns what to do rather than that it is "cross-site"."""
    origin = request_origin(request)
    if origin is None:
        raise Forbidden(NO_ORIGIN_MESSAGE)
    if origin not in allowed:
        raise Forbidden("cross-site request refused")


def check_login_origin(request: Request, allowed: tuple[str, ...]) -> None:
    """Refuse a login whose ``Origin`` is present and not allowed, ``null`` included (403).

    Browsers send ``Origin`` on every cross-site POST (Fetch §3.1), so a form on another site
    cannot log the victim into the attacker's account; API clients send none and still work.
    """
    origin = request.headers.get("origin")
    if origin is not None and origin not in allowed:
        raise Forbidden("cross-site request refused")
