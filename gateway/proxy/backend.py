"""The proxy's long-lived part: :class:`BackendProxy`, the pool to the backend and its settings.

Kept apart from the per-request handler (:mod:`gateway.proxy.handler`) so that the app state can
hold it without importing the handler, which reads that state.
"""

from __future__ import annotations

import ssl

from gateway.auth.tokens import TokenService
from gateway.auth.verified_tokens import VerifiedTokens
from gateway.proxy.upstream import UpstreamPool
from gateway.proxy.user_limit import UserLimit
from gateway.settings import Settings


class BackendProxy:
    """The keep-alive connection pool to the backend plus the proxy's settings; one per app.

    Opened in the gateway's lifespan (:meth:`start`/:meth:`close`) and kept at
    ``app.state.proxy``. Invariants every request through it keeps (:func:`proxy_request`):

    - nothing reaches the backend before the access token verified and its session was found
      not revoked, and nothing but ``/v1/...`` paths :func:`gateway.proxy.paths.backend_path`
      accepted;
    - one fresh internal token per request (per attempt, if the pool resends), bound to that
      method and that exact backend path; the client's ``Authorization``, ``DPoP`` and
      ``Cookie`` never cross, and neither do ``X-Internal-Auth``/``X-User-*``/``X-Forwarded-*``
      it sent;
    - the pool is shared but nothing per-user is: no cookie jar, no auth state, and response
      bytes pass through untouched (no decompression, so lengths stay true);
    - every wait is bounded (connect, pool acquire, each read), and a backend failure is a JSON
      502/504 unless the status line is already out, in which case the connection is cut so the
      client never takes a truncated body for a whole one.
    """

    def __init__(
        self, settings: Settings, tokens: TokenService, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.access_tokens = VerifiedTokens(tokens.verify_access)
        self.backend_url = settings.backend_url
        self.max_body = settings.proxy_max_body_bytes
        self.trusted_proxies = settings.trusted_proxies
        self.connect_timeout = settings.proxy_connect_timeout
        self.read_timeout = settings.proxy_read_timeout
        # OpenTelemetry on: the hop gets a CLIENT span (no instrumentation package covers it)
        self.traced = settings.otel_endpoint is not None
        self.user_limit = (
            UserLimit(
                redis=settings.redis,
                key_prefix=settings.redis_key_prefix,
                rate=settings.proxy_rate_limit_user,
            )
            if settings.proxy_rate_limit_user
            else None
        )
        self.tls = tls
        self._pool: UpstreamPool | None = None

    async def start(self) -> None:
        # connect bounds reaching the backend, read bounds every wait for response bytes, and
        # acquire bounds waiting for a free pooled connection under overload; no total, so a
        # long download that keeps moving is not cut off.
        self._pool = UpstreamPool(
            self.backend_url,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            acquire_timeout=self.read_timeout,
            limit=256,
            keepalive=30.0,
            ssl_context=self.tls,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            raise RuntimeError("BackendProxy.start() was not called (gateway lifespan not run)")
        return self._pool
