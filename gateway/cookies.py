"""The refresh cookie and the Origin check that guards cookie-authenticated requests.

The refresh token lives only in an ``HttpOnly`` cookie (script cannot read it, so XSS cannot
steal it), ``Secure`` (``COOKIE_SECURE=false`` is the development switch for plain-HTTP
localhost), ``SameSite=Strict`` and scoped to ``Path=/api/v1/auth`` so it is sent to the auth
routes only, never to proxied API calls.

SameSite is not enough on its own (same-site sibling subdomains, older browsers), so refresh and
logout also require an ``Origin`` (or, when a browser omits it, ``Referer``) on the allowlist
(OWASP CSRF cheat sheet, "Verifying origin with standard headers").
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import Forbidden

REFRESH_COOKIE = "tg_refresh"
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


def set_refresh_cookie(response: Response, token: str, *, max_age: int, secure: bool) -> None:
    response.set_cookie(
        REFRESH_COOKIE,
        token,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def clear_refresh_cookie(response: Response, *, secure: bool) -> None:
    response.delete_cookie(
        REFRESH_COOKIE, path=COOKIE_PATH, secure=secure, httponly=True, samesite="strict"
    )


def read_refresh_cookie(request: Request) -> str | None:
    return request.cookies.get(REFRESH_COOKIE) or None


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


def check_origin(request: Request, allowed: tuple[str, ...]) -> None:
    """Reject a cookie-authenticated call that does not come from an allowed origin (403)."""
    origin = request_origin(request)
    if origin is None or origin not in allowed:
        raise Forbidden("cross-site request refused")


def check_login_origin(request: Request, allowed: tuple[str, ...]) -> None:
    """Refuse a login whose ``Origin`` is present and not allowed, ``null`` included (403).

    Browsers send ``Origin`` on every cross-site POST (Fetch §3.1), so a form on another site
    cannot log the victim into the attacker's account; API clients send none and still work.
    """
    origin = request.headers.get("origin")
    if origin is not None and origin not in allowed:
        raise Forbidden("cross-site request refused")
