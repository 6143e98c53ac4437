"""Which HTTP client should the gateway's proxy hop use? Measure, on this machine, with wrk.

The same bare Starlette proxy (one catch-all route, pure ASGI endpoint, response streamed back)
is run once per client against a trivial upstream, each under uvicorn with uvloop + httptools:

- ``httpx``: ``httpx.AsyncClient`` with its default transport (httpcore);
- ``aiohttp``: ``aiohttp.ClientSession`` with a keep-alive ``TCPConnector``;
- ``pool``: the gateway's own ``gateway.proxy.upstream.UpstreamPool`` (asyncio connections, llhttp);
- ``direct``: wrk against the upstream itself, the floor the proxy hop adds to;
- ``tokengate``: the real gateway (``tokengate gateway``: access-token check, revocation check,
  internal token minted, header hygiene, request id, access log) over the same upstream, to show
  what the gateway costs on top of the bare hop. Its lifespan needs PostgreSQL and Redis
  (``BENCH_DATABASE_URL``, ``BENCH_REDIS_URL``; no tables are touched on this path).

Usage: ``python bench/proxy_client_bench.py [--duration 5] [--connections 32]``. Needs ``wrk``
(Debian/Ubuntu: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.types import ASGIApp, Receive, Scope, Send

from bench import wrk_tools

UPSTREAM_BODY = b'{"id":"00000000-0000-0000-0000-000000000000","email":"bench@example.com"}'


# -- the trivial upstream -------------------------------------------------------------------------


# The gateway polls the backend for account epochs (gateway/sessions/epochs.py): nothing ever
# changes here.
EPOCHS_PATH = "/internal/lifecycle/epochs"
EPOCHS_BODY = b'{"epochs":[]}'


async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = EPOCHS_BODY if scope["path"] == EPOCHS_PATH else UPSTREAM_BODY
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- the proxies ----------------------------------------------------------------------------------


class AsgiEndpoint:
    """Starlette wraps plain functions as request/response handlers; an instance stays raw ASGI."""

    def __init__(self, fn: ASGIApp) -> None:
        self.fn = fn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fn(scope, receive, send)


def httpx_proxy(upstream: str) -> Any:
    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Route

    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        state["client"] = httpx.AsyncClient(
            base_url=upstream, limits=httpx.Limits(max_keepalive_connections=64)
        )
        yield
        await state["client"].aclose()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        client = state["client"]
        req = client.build_request(scope["method"], "/v1/" + scope["path_params"]["path"])
        resp = await client.send(req, stream=True)
        try:
            headers = [(k, v) for k, v in resp.headers.raw if k.lower() != b"connection"]
            await send(
                {"type": "http.response.start", "status": resp.status_code, "headers": headers}
            )
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await resp.aclose()

    return Starlette(
        routes=[Route("/api/v1/{path:path}", AsgiEndpoint(endpoint))], lifespan=lifespan
    )


def aiohttp_proxy(upstream: str) -> Any:
    import aiohttp
    from starlette.applications import Starlette
    from starlette.routing import Route

    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        state["client"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        )
        yield
        await state["client"].close()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        client = state["client"]
        url = upstream + "/v1/" + scope["path_params"]["path"]
        async with client.request(scope["method"], url, allow_redirects=False) as resp:
            headers = [(k, v) for k, v in resp.raw_headers if k.lower() != b"connection"]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return Starlette(
        routes=[Route("/api/v1/{path:path}", AsgiEndpoint(endpoint))], lifespan=lifespan
    )


def pool_proxy(upstream: str) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from gateway.proxy.upstream import UpstreamPool

    state: dict[str, UpstreamPool] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        state["client"] = UpstreamPool(
            upstream, connect_timeout=2.0, read_timeout=30.0, acquire_timeout=30.0
        )
        yield
        await state["client"].close()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        target = ("/v1/" + scope["path_params"]["path"]).encode()
        resp = await state["client"].request(scope["method"], target, [])
        try:
            headers = [(k, v) for k, v in resp.raw_headers if k.lower() != b"connection"]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            async for chunk in resp.iter_chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            resp.release()

    return Starlette(
        routes=[Route("/api/v1/{path:path}", AsgiEndpoint(endpoint))], lifespan=lifespan
    )


# -- driver ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


@contextlib.contextmanager
def serve(role: str, port: int, upstream: str = "") -> Iterator[None]:
    cmd = [sys.executable, __file__, "--serve", role, "--port", str(port), "--upstream", upstream]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def wrk(url: str, connections: int, duration: int) -> dict[str, float]:
    r = wrk_tools.run(url, connections=connections, duration=duration)
    return {"rps": r.rps, "p50": r.p50_ms, "p99": r.p99_ms}


def gateway_environment(upstream: str, log_level: str) -> dict[str, str]:
    """A gateway environment over ``upstream`` with fresh secrets (shared with cpu_bench.py)."""
    import secrets

    from internal_auth import generate_private_key

    return {
        **os.environ,
        "DATABASE_URL": os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "REDIS_KEY_PREFIX": f"tokengate-bench-{secrets.token_hex(4)}:",
        "BACKEND_URL": upstream,
        "JWT_ACCESS_SECRET": secrets.token_urlsafe(32),
        "JWT_REFRESH_SECRET": secrets.token_urlsafe(32),
        "INTERNAL_JWT_PRIVATE_KEY": generate_private_key().private_pem(),
        "LOG_LEVEL": log_level,
    }


@contextlib.contextmanager
def tokengate_gateway(upstream: str, port: int) -> Iterator[str]:
    """The real gateway process over ``upstream``; yields a valid access token."""

    from gateway.auth.tokens import TokenService
    from gateway.settings import Settings

    env = gateway_environment(upstream, "WARNING")
    token, _ = TokenService(Settings.from_env(env)).issue_access(
        sub="00000000-0000-0000-0000-000000000001", sid="bench", roles=["user"]
    )
    cmd = [sys.executable, "-m", "tokengate.cli", "gateway", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield token
    finally:
        proc.terminate()
        proc.wait(10)


def tokengate_rows(
    upstream: str, connections: int, duration: int
) -> list[tuple[str, int, dict[str, float]]]:
    port = free_port()
    rows = []
    with tokengate_gateway(upstream, port) as token:
        url = f"http://127.0.0.1:{port}/api/v1/me"
        headers = {"Authorization": f"Bearer {token}"}
        wrk_tools.run(url, connections=4, duration=1, headers=headers)
        for conns in (1, connections):
            r = wrk_tools.run(url, connections=conns, duration=duration, headers=headers)
            rows.append(("tokengate", conns, {"rps": r.rps, "p50": r.p50_ms, "p99": r.p99_ms}))
    return rows


def run_server(role: str, port: int, upstream: str, **uvicorn_options: Any) -> None:
    import uvicorn

    app: Any
    if role == "upstream":
        app = upstream_app
    elif role == "httpx":
        app = httpx_proxy(upstream)
    elif role == "pool":
        app = pool_proxy(upstream)
    else:
        app = aiohttp_proxy(upstream)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="error",
        access_log=False,
        **uvicorn_options,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=["upstream", "httpx", "aiohttp", "pool"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", default="")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.port, args.upstream)
        return 0
    wrk_tools.require_wrk()
    print(f"cpus={os.cpu_count()} duration={args.duration}s, wrk -t1, uvloop+httptools everywhere")
    up_port = free_port()
    rows: list[tuple[str, int, dict[str, float]]] = []
    with serve("upstream", up_port):
        upstream = f"http://127.0.0.1:{up_port}"
        for conns in (1, args.connections):
            rows.append(("direct", conns, wrk(upstream + "/v1/me", conns, args.duration)))
        for client in ("httpx", "aiohttp", "pool"):
            port = free_port()
            with serve(client, port, upstream):
                url = f"http://127.0.0.1:{port}/api/v1/me"
                wrk(url, 4, 1)  # warm the pool
                for conns in (1, args.connections):
                    rows.append((client, conns, wrk(url, conns, args.duration)))
        rows.extend(tokengate_rows(upstream, args.connections, args.duration))
    print(f"{'client':<10}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for name, conns, r in rows:
        print(f"{name:<10}{conns:>6}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
