"""The demo page is served by the gateway itself under /demo/ (in process, no browser).

No lifespan runs here: static files need neither PostgreSQL nor Redis, so the page loads even
while the gateway's dependencies are down.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from internal_auth import generate_private_key
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.servers import free_port

DEMO_FILES = ("index.html", "app.js", "style.css", "favicon.svg")


def _app() -> Starlette:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "BACKEND_URL": "http://backend.internal",
            "JWT_ACCESS_SECRET": "a" * 40,
            "JWT_REFRESH_SECRET": "r" * 40,
            "INTERNAL_JWT_PRIVATE_KEY": generate_private_key().private_pem(),
            "CORS_ALLOWED_ORIGINS": "http://127.0.0.1:8000",
        }
    )
    return create_app(settings)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        yield c


def test_demo_files_ship_in_the_gateway_package() -> None:
    demo = importlib.resources.files("gateway") / "static" / "demo"
    for name in DEMO_FILES:
        assert (demo / name).is_file(), name


async def test_demo_index_is_served_with_security_headers(client: httpx.AsyncClient) -> None:
    r = await client.get("/demo/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script src="app.js" defer></script>' in r.text
    assert 'id="login-form"' in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    # the page restricts itself to its own origin (meta CSP: the gateway sets no CSP header)
    assert re.search(r"Content-Security-Policy\"\s+content=\"default-src 'self'", r.text)


async def test_demo_without_slash_redirects(client: httpx.AsyncClient) -> None:
    r = await client.get("/demo")
    assert r.status_code in (307, 308)
    assert r.headers["location"].endswith("/demo/")


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "evil.example"])
async def test_the_root_points_to_the_demo_and_the_api(
    client: httpx.AsyncClient, host: str
) -> None:
    """Issue 24, item 12: ``GET /`` was a bare JSON 404. A browser is sent to the demo page (a
    relative Location, never one built from ``Host``); anything else gets the pointers."""
    browser = await client.get("/", headers={"Accept": "text/html,*/*", "Host": host})
    assert browser.status_code == 303
    assert browser.headers["location"] == "/demo/"
    script = await client.get("/", headers={"Host": host})
    assert script.status_code == 200
    assert script.json() == {
        "service": "tokengate gateway",
        "demo": "/demo/",
        "openapi": "/api/v1/openapi.json",
    }


async def test_the_page_names_its_icon_so_no_favicon_request_404s(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/demo/")).text
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page)
    assert icon is not None
    assert (await client.get(f"/demo/{icon.group(1)}")).status_code == 200


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
async def test_demo_assets_are_served(
    client: httpx.AsyncClient, name: str, content_type: str
) -> None:
    r = await client.get(f"/demo/{name}")
    assert r.status_code == 200
    assert content_type in r.headers["content-type"]


async def test_demo_script_keeps_tokens_out_of_storage_and_markup(
    client: httpx.AsyncClient,
) -> None:
    source = (await client.get("/demo/app.js")).text
    for forbidden in (
        ".innerHTML",
        ".outerHTML",
        "localStorage.",
        "sessionStorage.",
        "document.cookie",
    ):
        assert forbidden not in source, forbidden
    assert "textContent" in source


async def _raw_get(port: int, target: bytes) -> bytes:
    """One request with ``target`` sent byte for byte: httpx (like every client library)
    resolves ``..`` segments before sending, so through it the traversal is never tried."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), 5.0)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "target",
    [b"/demo/../app.py", b"/demo/%2e%2e/app.py", b"/demo/..%2fapp.py", b"/demo/missing.js"],
)
async def test_paths_outside_the_demo_folder_are_not_served(target: bytes) -> None:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_app(), host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.01)
        answer = await _raw_get(port, target)
    finally:
        server.should_exit = True
        await task
    status = answer.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 404 Not Found", (target, status)
    assert b"create_app" not in answer
