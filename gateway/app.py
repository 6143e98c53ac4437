"""The gateway application: ``create_app(settings)`` builds it, the lifespan opens its resources.

What they leave on ``app.state`` is declared, with its type, in :class:`gateway.state.GatewayState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from internal_auth import KeyHolder, Minter
from servicekit import db, otel, redis_url, tls
from servicekit.bodies import BodyError
from servicekit.config import ConfigError
from servicekit.logs import log_event
from servicekit.metrics import (
    RequestCounter,
    RouteTemplates,
    mark_worker_stopped,
    postgres_error,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from gateway import gauges, metrics, openapi, signing
from gateway.audit import routes as audit_routes
from gateway.audit.writer import audit_ensure_partitions, audit_writer
from gateway.auth import routes as auth_routes
from gateway.auth.backend_client import BackendClient
from gateway.auth.ratelimit import RateLimits
from gateway.auth.tokens import TokenService
from gateway.dpop import DPoP
from gateway.edge import Edge, error_response, proxy_only_paths
from gateway.errors import GatewayError
from gateway.policy.reload import PolicyReloader
from gateway.proxy.backend import BackendProxy, Service
from gateway.proxy.handler import PROXY_PATH, proxy_request, proxy_route
from gateway.proxy.tls import client_context
from gateway.sessions.epochs import UserEpochs
from gateway.sessions.ledger import Ledger
from gateway.sessions.pruner import LedgerPruner
from gateway.sessions.revocation import RevokedSessions
from gateway.settings import Settings
from gateway.state import GatewayState, gateway_state

logger = logging.getLogger("gateway.app")

DEMO_DIR = Path(__file__).parent / "static" / "demo"


class GatewayApp(Starlette):
    """Starlette with :class:`gateway.edge.Edge` outside its whole stack (error middleware too),
    so every answer, even Starlette's own 500, passes the edge (see ``gateway/edge.py``)."""

    edge_options: dict[str, Any]
    otel_layers: list[Middleware]

    def build_middleware_stack(self) -> ASGIApp:
        catch_all = next(r for r in self.routes if isinstance(r, Route) and r.path == PROXY_PATH)
        # OpenTelemetry (when on) inside the edge, which has already decided the trace; on both
        # paths, since proxied requests skip Starlette's stack.
        spans = self.otel_layers
        return Edge(
            otel.wrap(super().build_middleware_stack(), spans),
            proxy=otel.wrap(proxy_request, spans),
            proxy_only=proxy_only_paths(self.routes, catch_all),
            **self.edge_options,
        )


def cors_options(settings: Settings) -> dict[str, Any]:
    """Starlette ``CORSMiddleware`` options for the gateway (the edge layer applies them)."""
    return {
        "allow_origins": list(settings.cors_allowed_origins),
        "allow_credentials": True,
        "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
        # DPoP: the proof header in, the nonce and the challenge out (RFC 9449 §7.1, §8)
        "allow_headers": [
            "Authorization",
            "Content-Type",
            "DPoP",
            "X-Request-ID",
            "traceparent",
            "tracestate",
        ],
        "expose_headers": [
            "DPoP-Nonce",
            "WWW-Authenticate",
            "Retry-After",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-Request-ID",
        ],
        "max_age": 600,
    }


async def demo_with_slash(request: Request) -> Response:
    # Relative, so the Location never echoes the client's Host header (slash redirects are off).
    return RedirectResponse("/demo/", status_code=308)


#: ``GET /``: a person who opens the gateway's address finds the demo page, a script the
#: pointers (a bare 404 there told a new user nothing).
ROOT_POINTERS = {
    "service": "tokengate gateway",
    "demo": "/demo/",
    "openapi": "/api/v1/openapi.json",
}


async def root(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        # relative, like the /demo redirect: the Location never echoes the client's Host
        return RedirectResponse("/demo/", status_code=303)
    return JSONResponse(ROOT_POINTERS)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _other_service(state: GatewayState, service: Service) -> bool | str:
    """A service of GATEWAY_CONFIG other than the identity service: a signed probe where it opts
    in (``probe = true``: it trusts this gateway's key, issuer and its audience), else /healthz."""
    policy = state.settings.policy
    config = policy.services.get(service.name) if policy is not None else None
    if config is not None and config.probe:
        return await state.backend.probe_other(
            service.url, service.audience, tls=service.ssl_context
        )
    return await state.backend.ready(service.url, tls=service.ssl_context)


async def readyz(request: Request) -> Response:
    state = gateway_state(request)

    async def postgres() -> bool | str:
        # a standby (the pool reached one, or the primary was demoted) cannot take a write
        query = "SELECT NOT pg_is_in_recovery()"
        try:
            writable = await asyncio.wait_for(state.pool.fetchval(query), 2.0) is True
        except Exception:
            return "unreachable"
        return True if writable else "read-only (a standby)"

    async def redis_ok() -> bool | str:
        try:
            master = await asyncio.wait_for(redis_url.is_master(state.redis), 2.0)
        except Exception:
            return "unreachable"
        return True if master else "not the master (a replica)"

    policy = state.settings.policy
    # Only the identity service, PostgreSQL and Redis decide readiness: without them nobody logs
    # in. Every other service of GATEWAY_CONFIG is listed by name but fails only its own routes.
    others = [
        service
        for name, service in state.proxy.services.items()
        if policy is not None and name != policy.identity
    ]
    (backend, pg, rd), listed = await asyncio.gather(
        # the identity service verifies a signed probe: it trusts this gateway's key and ids
        asyncio.gather(state.backend.probe(), postgres(), redis_ok()),
        asyncio.gather(*(_other_service(state, service) for service in others)),
    )
    # true, or why not: "internal token refused: unknown_kid" tells the operator what to fix
    checks: dict[str, bool | str] = {"backend": backend or True, "postgres": pg, "redis": rd}
    ready = all(value is True for value in checks.values())
    for service, ok in zip(others, listed, strict=True):
        # a service named like a check above (identity elsewhere, one called "backend") still shows
        name = service.name if service.name not in checks else f"service:{service.name}"
        checks[name] = ok or "unreachable"
    # which servers: the index into DATABASE_URL's hosts (bounded), the Redis master's address
    master = redis_url.current_master(state.redis.connection_pool)
    in_use = {
        "postgres_host": state.pool.host_index,
        "redis_master": master,
        # the label the metric carries for it (tokengate_gateway_redis_master{master})
        "redis_master_id": metrics.master_id(master) if master is not None else None,
    }
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks, "in_use": in_use},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "5"},
    )


def on_sighup(callback: Callable[[], None]) -> Callable[[], None] | None:
    """Run ``callback`` on SIGHUP, and whatever Python handler was there before (a certificate
    reload in place, ``servicekit.tls``): SIGHUP means "look at your files now" to each. Returns
    the undo, or ``None`` where this loop cannot take signals (not the main thread: an app
    served in a test's thread, whose process has its own)."""
    previous = signal.getsignal(signal.SIGHUP)

    def both() -> None:
        callback()
        if callable(previous):
            previous(signal.SIGHUP, None)

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, both)
    except (RuntimeError, ValueError, NotImplementedError):
        return None

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)

    return undo


def _load_minter(settings: Settings) -> tuple[KeyHolder, Minter]:
    keys = signing.load_keys(settings)
    return keys, Minter(
        keys,
        issuer=settings.gateway_id,
        audience=settings.backend_id,
        ttl=settings.internal_token_ttl,
    )


def route_templates(routes: list[BaseRoute]) -> RouteTemplates:
    """The templates requests are counted under: the gateway's own routes, then the proxied
    ones; anything else is ``other``."""
    templates: list[str] = []
    for route in routes:
        if isinstance(route, Mount):
            templates += [route.path + "/", route.path + "/{path:path}"]
        elif isinstance(route, Route):
            templates.append(route.path)
    return RouteTemplates([*templates, *metrics.PROXIED_ROUTES])


def _backend_tls(settings: Settings) -> ssl.SSLContext | None:
    """The hop's TLS context (an https:// BACKEND_URL): one for the pool and httpx alike."""
    if settings.backend_ca_file is None:
        return None
    context = client_context(
        settings.backend_ca_file,
        settings.backend_client_cert_file,
        settings.backend_client_key_file,
    )
    if settings.backend_client_cert_file is not None:
        tls.watch_expiry("gateway", "client", settings.backend_client_cert_file)
    return context


def create_app(
    settings: Settings, *, backend_transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    """Build the gateway. ``backend_transport`` lets tests run a backend in process."""
    if "*" in settings.cors_allowed_origins:
        raise ConfigError("CORS_ALLOWED_ORIGINS must not contain '*' (credentials are allowed)")
    tokens = TokenService(settings)
    signing_keys, minter = _load_minter(settings)
    backend_tls = _backend_tls(settings)
    # app.state, typed; installed below before any request or lifespan can read it
    state = GatewayState()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await db.Database.connect(settings.database_url, settings.pool)
        # health checks make a silently dead pub/sub connection fail (and so reconnect and
        # reload the revocation set) instead of waiting forever for messages
        redis_client = redis_url.async_client(
            settings.redis,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            health_check_interval=15,
        )
        # the identity calls and the readiness probe verify the service like the pool does: the
        # one backend's BACKEND_CA_FILE..., or the identity service's files in GATEWAY_CONFIG
        identity_tls = (
            settings.policy.services[settings.policy.identity].ssl_context()
            if settings.policy is not None
            else backend_tls
        )
        http = httpx.AsyncClient(
            base_url=settings.backend_url,
            transport=backend_transport,
            verify=identity_tls if identity_tls is not None else True,
            timeout=httpx.Timeout(
                settings.proxy_read_timeout, connect=settings.proxy_connect_timeout
            ),
        )
        epochs = UserEpochs(
            access_ttl=settings.access_token_ttl, reload_interval=settings.epoch_reload_interval
        )
        ledger = Ledger(
            pool,
            refresh_ttl=settings.refresh_token_ttl,
            family_lifetime=settings.refresh_family_lifetime,
            grace_seconds=settings.refresh_grace_seconds,
        )
        revoked = RevokedSessions(
            redis_client,
            prefix=settings.redis_key_prefix,
            ttl=settings.access_token_ttl,
            revoked_since=ledger.revoked_since,
            epochs=epochs,
        )
        state.pool = pool
        state.redis = redis_client
        state.revoked = revoked
        state.epochs = epochs
        state.ledger = ledger
        backend = BackendClient(
            http,
            minter,
            gateway_id=settings.gateway_id,
            epochs_page_size=settings.epoch_reload_page_size,
        )
        state.backend = backend
        state.ratelimits = RateLimits(settings)
        dpop = state.dpop = DPoP.from_settings(settings, redis_client)
        proxy = BackendProxy(settings, tokens, tls=backend_tls)
        await proxy.start()
        state.proxy = proxy
        reloader: PolicyReloader | None = None
        if settings.gateway_config is not None and proxy.policy is not None:
            reloader = PolicyReloader(
                proxy,
                settings.gateway_config,
                interval=settings.gateway_config_reload_interval,
                max_bytes=settings.gateway_config_max_bytes,
            )
            reloader.start()
        state.policy_reloader = reloader
        # SIGHUP is "look at GATEWAY_CONFIG now"; without a handler a single-process uvicorn
        # dies of it (it handles SIGINT and SIGTERM only)
        sighup = on_sighup(reloader.wake) if reloader is not None else None
        # epochs first: the durable source, so even with Redis down (or flushed) this instance
        # refuses the access tokens of accounts changed within one access-token lifetime
        await epochs.start(backend.epochs_since)
        await revoked.start()
        pruner = LedgerPruner(
            ledger,
            retention=settings.refresh_ledger_retention,
            interval=settings.refresh_ledger_prune_interval,
        )
        pruner.start()
        state.pruner = pruner
        state.audit = None
        if settings.audit_enabled:
            state.audit = audit_writer(settings, pool)
            await audit_ensure_partitions(pool)
            state.audit.start()
        log_event(
            logger,
            "gateway_started",
            # the form and hosts only, never a password
            redis=settings.redis.describe(),
            revocation_connected=revoked.connected,
            epochs_loaded=epochs.loaded,
        )
        sampler = asyncio.create_task(gauges.sample_gauges(state), name="metrics-sampler")
        key_watch = (
            asyncio.create_task(
                signing.watch_key_file(signing_keys, settings.gateway_config_reload_interval),
                name="signing-keys-watch",
            )
            if signing_keys.path is not None
            else None
        )
        try:
            yield
        finally:
            sampler.cancel()
            if key_watch is not None:
                key_watch.cancel()
            if sighup is not None:
                sighup()
            if reloader is not None:
                await reloader.stop()
            mark_worker_stopped()
            otel.shutdown()
            await pruner.stop()
            if state.audit is not None:
                # the last batch is written before the pool closes
                await state.audit.close()
            await revoked.stop()
            await epochs.stop()
            await proxy.close()
            await dpop.close()
            await http.aclose()
            await redis_client.aclose()
            await pool.close()

    routes: list[BaseRoute] = [
        Route("/", root, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *auth_routes.routes,
        *audit_routes.routes,
        openapi.route(),
        Route("/demo", demo_with_slash, methods=["GET"]),
        Mount("/demo", app=StaticFiles(directory=DEMO_DIR, html=True), name="demo"),
    ]
    app = GatewayApp(
        routes=[*routes, proxy_route()],
        # One mapping (gateway.edge.error_response) for every exception: JSON whatever happens.
        exception_handlers=dict.fromkeys(
            (GatewayError, BodyError, HTTPException, Exception, *db.UNAVAILABLE), error_response
        ),
        lifespan=lifespan,
    )
    app.otel_layers = otel.setup("tokengate-gateway", settings.otel_endpoint)
    app.edge_options = {
        "trusted_proxies": settings.trusted_proxies,
        "cors": cors_options(settings),
        "on_response": RequestCounter(
            None, routes=route_templates(routes), counter=metrics.REQUESTS
        ).count,
    }
    # No 307 to the same path with or without a slash (GET /api/v1 answered one): its Location
    # is built from the client's Host header, and an unknown path is a plain JSON 404.
    app.router.redirect_slashes = False
    app.state = state
    state.settings = settings
    state.db_outages = db.Outages(
        logger, on_record=postgres_error(metrics.POSTGRES_ERRORS, "gateway")
    )
    state.tokens = tokens
    state.minter = minter
    state.signing_keys = signing_keys
    return app
