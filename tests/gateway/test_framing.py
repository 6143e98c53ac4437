"""Every HTML page the gateway serves refuses framing in its response headers (a ``<meta>`` CSP
cannot carry ``frame-ancestors``) and allows only its own scripts; other responses refuse framing
and load nothing."""

from __future__ import annotations

import pytest

from gateway.app import DEMO_DIR
from tests.gateway.conftest import Harness

HTML_FILES = sorted(p.relative_to(DEMO_DIR).as_posix() for p in DEMO_DIR.rglob("*.html"))


def _directives(csp: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in csp.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


def _assert_unframeable(headers: dict[str, str]) -> dict[str, list[str]]:
    assert headers["x-frame-options"] == "DENY"
    csp = _directives(headers["content-security-policy"])
    assert csp["frame-ancestors"] == ["'none'"]
    return csp


def test_there_is_html_to_check() -> None:
    assert "index.html" in HTML_FILES


@pytest.mark.parametrize("path", ["/demo/", "/demo", *(f"/demo/{f}" for f in HTML_FILES)])
async def test_every_html_page_refuses_framing_and_foreign_scripts(
    gateway: Harness, env: dict[str, str], path: str
) -> None:
    async with gateway(env) as client:
        r = await client.get(path, follow_redirects=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = _assert_unframeable(dict(r.headers))
    assert csp["script-src"] == ["'self'"]
    assert csp["default-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/demo/app.js"),
        ("GET", "/nope"),
        ("POST", "/api/v1/auth/login"),
    ],
)
async def test_other_responses_refuse_framing_and_load_nothing(
    gateway: Harness, env: dict[str, str], method: str, path: str
) -> None:
    async with gateway(env) as client:
        r = await client.request(method, path)
    csp = _assert_unframeable(dict(r.headers))
    assert csp["default-src"] == ["'none'"]
