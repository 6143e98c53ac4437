"""The proxy's long-lived part: :class:`BackendProxy`, one :class:`Service` (and its pool) per
service behind the gateway, and the proxy's settings.

Kept apart from the per-request handler (:mod:`gateway.proxy.handler`) so that the app state can
hold it without importing the handler, which reads that state.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.auth.tokens import TokenService
from gateway.auth.verified_tokens import VerifiedTokens
from gateway.policy import Policy, ServiceConfig
from gateway.proxy.uploads import Uploads
from gateway.proxy.upstream import UpstreamPool
from gateway.proxy.user_limit import UserLimit
from gateway.settings import Settings

#: The name of the one service without ``GATEWAY_CONFIG`` (``BACKEND_URL``, ``BACKEND_ID``).
DEFAULT_SERVICE = "backend"


def pool_bounds(settings: Settings) -> dict[str, Any]:
    """The pool settings every service's pool is opened with."""
    return {
        "pool_size": settings.proxy_pool_size,
        "pool_keepalive": settings.proxy_pool_keepalive,
        "pool_timeout": settings.proxy_pool_timeout,
        "max_head_bytes": settings.proxy_backend_max_head_bytes,
        "max_interim": settings.proxy_backend_max_interim,
    }


@dataclass(eq=False)
class Service:
    """One service behind the gateway: where it is, the audience of its internal tokens, its own
    keep-alive pool and timeouts, and the ``service`` label of its failure metrics."""

    name: str
    url: str
    audience: str
    connect_timeout: float
    read_timeout: float
    #: the hop's TLS context: the service's own CA and client certificate (``None``: plain
    #: HTTP; an https:// service without one is refused at start-up)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    #: the pool's bounds, the same for every service (PROXY_POOL_*, PROXY_BACKEND_MAX_*)
    pool_size: int = 256
    pool_keepalive: float = 4.0
    pool_timeout: float = 5.0
    max_head_bytes: int = 65536
    max_interim: int = 8
    _pool: UpstreamPool | None = field(default=None, repr=False)
    #: ``backend_failures_total{service=name, kind}``
    failures: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.failures = metrics.failure_counters(self.name)

    @classmethod
    def from_config(cls, config: ServiceConfig, settings: Settings) -> Service:
        return cls(
            name=config.name,
            url=config.url,
            audience=config.audience,
            connect_timeout=config.connect_timeout or settings.proxy_connect_timeout,
            read_timeout=config.read_timeout or settings.proxy_read_timeout,
            ssl_context=config.ssl_context(),
            **pool_bounds(settings),
        )

    async def start(self) -> None:
        # connect bounds reaching the service, read bounds every wait for response bytes, and
        # acquire bounds waiting for a free pooled connection under overload (a 503 of its own:
        # the gateway is busy, the service is not late); no total, so a long download that
        # keeps moving is not cut off.
        self._pool = UpstreamPool(
            self.url,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            acquire_timeout=self.pool_timeout,
            limit=self.pool_size,
            keepalive=self.pool_keepalive,
            ssl_context=self.ssl_context,
            max_head_bytes=self.max_head_bytes,
            max_interim=self.max_interim,
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


class BackendProxy:
    """The services behind the gateway, each with its keep-alive pool, plus the proxy's settings
    and the policy that picks a service and decides a request; one per app.

    Opened in the gateway's lifespan (:meth:`start`/:meth:`close`) and kept at
    ``app.state.proxy``. Invariants every request through it keeps (:func:`proxy_request`):

    - nothing reaches a service before the access token verified and its session was found not
      revoked (or, with a policy, before a ``public`` allow rule admitted an anonymous request),
      and nothing but ``/v1/...`` paths :func:`gateway.proxy.paths.backend_path` accepted;
    - with a policy (``GATEWAY_CONFIG``), nothing reaches a service that no allow rule covers,
      or that a deny rule covers, and only the service its route names;
    - one fresh internal token per request (per attempt, if the pool resends), bound to that
      method and that exact service path, for that service's audience only; the client's
      ``Authorization``, ``DPoP`` and ``Cookie`` never cross, and neither do
      ``X-Internal-Auth``/``X-User-*``/``X-Forwarded-*`` it sent;
    - the pools are shared but nothing per-user is: no cookie jar, no auth state, and response
      bytes pass through untouched (no decompression, so lengths stay true);
    - every wait is bounded (connect, pool acquire, each read, each piece of the client's body),
      and a service failure is a JSON 502/504 (a full pool 503) unless the status line is
      already out, in which case the connection is cut so the client never takes a truncated
      body for a whole one;
    - unfinished uploads hold a bounded share of the pools (:class:`Uploads`, fewer places in
      all than any pool has connections), so a request without a body always finds a
      connection that no upload can take.
    """

    def __init__(
        self, settings: Settings, tokens: TokenService, *, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: the context of the one service without a policy (``BACKEND_CA_FILE``...,
        :func:`gateway.proxy.tls.client_context`); a policy's services bring their own."""
        self.access_tokens = VerifiedTokens(tokens.verify_access)
        self.gateway_id = settings.gateway_id
        self.max_body = settings.proxy_max_body_bytes
        self.trusted_proxies = settings.trusted_proxies
        self.body_timeout = settings.body_read_timeout
        self.buffer_bytes = settings.proxy_buffer_bytes
        self.uploads = Uploads(
            total=settings.proxy_uploads_max,
            per_user=settings.proxy_uploads_per_user,
            per_ip=settings.proxy_uploads_per_ip,
        )
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
        #: ``None``: no ``GATEWAY_CONFIG``, one service and any authenticated user (as before)
        self.policy: Policy | None = settings.policy
        if settings.policy is None:
            services = [
                Service(
                    name=DEFAULT_SERVICE,
                    url=settings.backend_url,
                    audience=settings.backend_id,
                    connect_timeout=settings.proxy_connect_timeout,
                    read_timeout=settings.proxy_read_timeout,
                    ssl_context=tls,
                    **pool_bounds(settings),
                )
            ]
        else:
            services = [
                Service.from_config(config, settings)
                for config in settings.policy.services.values()
            ]
        self.services: dict[str, Service] = {service.name: service for service in services}
        #: the service of every request without a policy
        self.default = services[0]
        #: anonymous requests per client IP (``PROXY_RATE_LIMIT_IP``): only a policy admits them
        self.ip_limit = (
            UserLimit(
                redis=settings.redis,
                key_prefix=settings.redis_key_prefix,
                rate=settings.proxy_rate_limit_ip,
                namespace="proxy-ip",
                limit="ip",
                fail_open=False,
            )
            if settings.proxy_rate_limit_ip and settings.policy is not None
            else None
        )

    async def start(self) -> None:
        for service in self.services.values():
            await service.start()

    async def close(self) -> None:
        for service in self.services.values():
            await service.close()
