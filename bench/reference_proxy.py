"""The yardstick for the gateway's hot path: the least a correct token-checking proxy must do.

Per request it does what the gateway cannot skip, and nothing else:

- verifies the HS256 access token from ``Authorization: Bearer`` with the gateway's own verifier
  (:meth:`gateway.auth.tokens.TokenService.verify_access`: algorithm, ``typ``, issuer, audience,
  expiry pinned) on **every** request, with no caching of any kind;
- mints a fresh EdDSA internal token for that request (:class:`internal_auth.Minter`, one
  ``jti`` each, bound to method and path);
- forwards to ``BACKEND_URL`` + ``/v1/...`` over an aiohttp keep-alive pool, without the client's
  ``Authorization``, and sends the answer back.

No routing framework, no middleware, no logging, no CORS, no header hygiene: a raw ASGI app under
the same server and flags as the gateway (uvicorn, uvloop, httptools, one worker, access log off).

Run: ``python bench/reference_proxy.py --port N`` with ``BACKEND_URL``, ``JWT_ACCESS_SECRET``,
``JWT_REFRESH_SECRET`` and ``INTERNAL_JWT_PRIVATE_KEY`` in the environment (``bench/cpu_bench.py``
starts it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import aiohttp
from starlette.types import Message, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internal_auth import Minter, TokenScope, load_private_key

from gateway.auth.tokens import TokenService
from gateway.errors import GatewayError
from gateway.settings import Settings

_UNAUTHORIZED = b'{"error":{"code":"unauthorized","message":"authentication required"}}'
_DROP = frozenset({b"authorization", b"host", b"connection", b"content-length"})


class ReferenceProxy:
    def __init__(self, settings: Settings) -> None:
        self.tokens = TokenService(settings)
        self.minter = Minter(
            load_private_key(settings.internal_jwt_private_key),
            issuer=settings.gateway_id,
            audience=settings.backend_id,
            ttl=settings.internal_token_ttl,
        )
        self.base = settings.backend_url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        token = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value
                break
        scheme, _, raw = token.partition(b" ")
        try:
            if scheme.lower() != b"bearer":
                raise GatewayError()
            claims = self.tokens.verify_access(raw.decode("latin-1").strip())
        except GatewayError:
            await _respond(send, 401, [(b"content-type", b"application/json")], _UNAUTHORIZED)
            return
        method: str = scope["method"]
        path = "/v1/" + scope["path"].removeprefix("/api/v1/")
        internal = self.minter.mint(
            sub=claims.sub,
            scope=TokenScope.USER_REQUEST,
            htm=method,
            htu=path,
            roles=claims.roles,
            sid=claims.sid,
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k not in _DROP
        ]
        headers.append(("x-internal-auth", internal))
        body = b""
        more = True
        while more:
            message: Message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if self.session is None:
            raise RuntimeError("lifespan not run")
        async with self.session.request(
            method, self.base + path, headers=headers, data=body or None, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            out = [
                (k.lower(), v)
                for k, v in resp.raw_headers
                if k.lower() not in (b"connection", b"date", b"server", b"transfer-encoding")
            ]
            await _respond(send, resp.status, out, payload)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = ReferenceProxy(Settings.from_env(os.environ))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=None,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
