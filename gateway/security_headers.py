"""Security headers on every gateway response (applied by :class:`gateway.edge.Edge`).

- ``X-Content-Type-Options: nosniff``: a JSON error must never be sniffed into HTML and run.
- ``Referrer-Policy: no-referrer``: URLs of this API never leak to third parties.
- ``Cache-Control: no-store`` on auth responses (tokens in bodies, cookies; RFC 6749 §5.1 asks
  for it on token responses) and on any response that does not say otherwise, since everything
  behind the gateway is per-user data that no shared cache should keep.
- Framing refused on every response, in headers (a ``<meta>`` CSP cannot carry
  ``frame-ancestors``, CSP3 §6.4.2): ``X-Frame-Options: DENY`` for old browsers and CSP
  ``frame-ancestors 'none'`` for the rest, so no page of the gateway can be clickjacked.
- ``Content-Security-Policy``: HTML may load script, style, images and API calls from this
  origin only; anything else (JSON, errors) may load nothing at all.
- ``Strict-Transport-Security`` only when the request arrived over HTTPS (RFC 6797 §7.2: a
  host must not send it over plain HTTP). Behind a TLS-terminating proxy listed in
  ``TRUSTED_PROXIES``, its ``X-Forwarded-Proto`` says whether the client used HTTPS.
"""

from __future__ import annotations

from collections.abc import Iterable

AUTH_PREFIX = "/api/v1/auth/"
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
HTML_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)
OTHER_CSP = b"default-src 'none'; frame-ancestors 'none'"
_OWNED = frozenset(
    {
        b"x-content-type-options",
        b"referrer-policy",
        b"strict-transport-security",
        b"x-frame-options",
        b"content-security-policy",
    }
)
_NO_STORE = (b"cache-control", b"no-store")


def security_headers(
    headers: Iterable[tuple[bytes, bytes]], *, path: str, https: bool
) -> list[tuple[bytes, bytes]]:
    """``headers`` with the security headers applied (the gateway's values win)."""
    auth = path.startswith(AUTH_PREFIX)
    out = []
    has_cache_control = False
    html = False
    for name, value in headers:
        lname = name.lower()
        if lname in _OWNED:
            continue
        if lname == b"content-type":
            html = value.split(b";")[0].strip().lower() in (b"text/html", b"application/xhtml+xml")
        if lname == b"cache-control":
            if auth:
                continue
            has_cache_control = True
        out.append((name, value))
    out.extend(_ALWAYS)
    out.append((b"x-frame-options", b"DENY"))
    out.append((b"content-security-policy", HTML_CSP if html else OTHER_CSP))
    if not has_cache_control:
        out.append(_NO_STORE)
    if https:
        out.append(HSTS)
    return out
