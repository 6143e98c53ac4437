"""The gateway's Prometheus metrics: what they are, and the small calls the code makes.

Every label set a hot path uses is bound once (a dict of pre-bound children, or a child created
the first time a route/method/status-class triple is seen, then cached): a proxied request costs
one route lookup, two dict lookups and a few counter/histogram updates, no label formatting.

Names (all prefixed ``tokengate_gateway_``):

- ``requests_total{route,method,status_class}``: every HTTP request. ``route`` is a gateway route
  template, a proxied route template (:data:`PROXIED_ROUTES`) or ``other``.
- ``proxy_duration_seconds{part}``: a proxied request's time, ``part="backend"`` from sending it
  to the backend until its answer was read (its headers, for a streamed answer) and
  ``part="gateway"`` everything else (authentication, minting, forwarding, streaming back).
- ``backend_failures_total{service,kind}``: ``connect`` (refused, unreachable), ``timeout`` (the
  service did not answer in time: 504), ``reset`` (the connection broke, or the answer was
  malformed or over its bounds: 502), ``pool`` (no free pooled connection within
  ``PROXY_POOL_TIMEOUT``: the gateway is busy, 503; not the service's failure, so a kind of its
  own); ``service`` as the policy names it (``backend`` without one).
- ``logins_total{outcome}``, ``refresh_total{outcome}`` (the ledger's ``Outcome`` values),
  ``revocations_total{reason}`` (families revoked), ``rate_limited_total{limit}`` (``uploads-user``,
  ``uploads-ip`` and ``uploads`` are unfinished uploads refused over their share of the pool).
- ``revocation_listener_connected`` (0/1; with several workers the lowest, so one disconnected
  worker shows), ``revoked_sessions`` (the local revoked set), ``db_pool_connections{state}``
  (``in_use``/``idle``), ``redis_errors_total{operation}``; PostgreSQL failures are
  ``tokengate_postgres_errors_total{service="gateway"}`` (:mod:`servicekit.metrics`).
- ``audit_events_total{fate}``: audit events ``written`` or ``dropped`` (a full queue: an alert
  should fire on any).
- ``signing_keys_reloads_total{outcome}``: key file re-reads that changed the set or failed.
- ``config_reloads_total{outcome}`` (``applied``, ``failed``, ``refused``),
  ``config_hash`` (per worker: the first 48 bits of the served file's SHA-256, as
  ``tokengate policy check`` prints it) and ``config_last_reload_timestamp_seconds``.
- ``build_info{version,python}``: always 1; which release and interpreter each instance runs.
- ``dpop_proofs_total{outcome}``: DPoP proofs accepted (``ok``) or refused, by the check that
  refused them (``replay``, ``htu``, ``iat_window``, ``ath``, ``jkt``, ``nonce``, ...);
  ``dpop_replay_round_trips_total`` and ``dpop_replay_claims_total``: Redis round trips of the
  ``jti`` replay cache and the proofs they carried (claims made together share one pipeline).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from servicekit import db, tls
from servicekit.metrics import build_info, postgres_errors
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import (
    BadGateway,
    GatewayError,
    InvalidCredentials,
    RateLimited,
    ServiceUnavailable,
)
from gateway.proxy.upstream import BackendUnreachable, PoolTimeout

#: The backend's routes as the public sees them (``/v1/x`` is proxied at ``/api/v1/x``).
#: A test checks this against the backend's own route table, so it cannot drift.
PROXIED_ROUTES = (
    "/api/v1/me",
    "/api/v1/users",
    "/api/v1/notes",
    "/api/v1/notes/{note_id}",
)

#: The gateway's own registry, the one its metrics listener serves: with prometheus-client's
#: default one, whatever else the process imported (the backend's families) was exported too,
#: as zeros, and the backend's listener showed ``revocation_listener_connected 0`` forever.
REGISTRY = CollectorRegistry()
BUILD_INFO = build_info(REGISTRY, "gateway")
POSTGRES_ERRORS = postgres_errors(REGISTRY)
# the hop's TLS families, shared by both services, served here with this service's own
REGISTRY.register(tls.HANDSHAKE_FAILURES)
REGISTRY.register(tls.CERT_EXPIRY)

REQUESTS = Counter(
    "tokengate_gateway_requests_total",
    "HTTP requests by route template, method and status class.",
    ["route", "method", "status_class"],
    registry=REGISTRY,
)
PROXY_DURATION = Histogram(
    "tokengate_gateway_proxy_duration_seconds",
    "Proxied request time, split into the backend's part and the gateway's own part.",
    ["part"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BACKEND_FAILURES = Counter(
    "tokengate_gateway_backend_failures_total",
    "Proxied requests a service did not answer, by service: connect, timeout, reset, pool.",
    ["service", "kind"],
    registry=REGISTRY,
)
LOGINS = Counter(
    "tokengate_gateway_logins_total", "Login attempts by outcome.", ["outcome"], registry=REGISTRY
)
REFRESHES = Counter(
    "tokengate_gateway_refresh_total",
    "Refresh-token presentations by ledger outcome (reused-revoked is a reuse detection).",
    ["outcome"],
    registry=REGISTRY,
)
REVOCATIONS = Counter(
    "tokengate_gateway_revocations_total",
    "Session families revoked, by reason.",
    ["reason"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "tokengate_gateway_rate_limited_total",
    "Requests refused with 429, by limit.",
    ["limit"],
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "tokengate_gateway_redis_errors_total",
    "Redis failures, by operation.",
    ["operation"],
    registry=REGISTRY,
)
LISTENER_CONNECTED = Gauge(
    "tokengate_gateway_revocation_listener_connected",
    "1 while the revocation listener is subscribed to Redis (lowest over workers).",
    multiprocess_mode="livemin",
    registry=REGISTRY,
)
REVOKED_SESSIONS = Gauge(
    "tokengate_gateway_revoked_sessions",
    "Session families in the local revoked set (highest over workers).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
DPOP_PROOFS = Counter(
    "tokengate_gateway_dpop_proofs_total",
    "DPoP proofs by outcome (ok or the failed check).",
    ["outcome"],
    registry=REGISTRY,
)
DPOP_ROUND_TRIPS = Counter(
    "tokengate_gateway_dpop_replay_round_trips_total",
    "Redis round trips of the DPoP jti cache.",
    registry=REGISTRY,
)
DPOP_CLAIMS = Counter(
    "tokengate_gateway_dpop_replay_claims_total",
    "DPoP jti values claimed in Redis.",
    registry=REGISTRY,
)
DB_POOL = Gauge(
    "tokengate_gateway_db_pool_connections",
    "PostgreSQL pool connections by state (summed over workers).",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

POSTGRES_HOST = Gauge(
    "tokengate_gateway_postgres_host",
    "1 for the DATABASE_URL host (its index in the list; -1 unknown) the pool last reached.",
    ["index"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
REDIS_MASTER = Gauge(
    "tokengate_gateway_redis_master",
    "1 for the Redis master the gateway talks to now, by master_id (the first 12 hex digits of "
    "the SHA-256 of host:port, as /readyz shows; no label carries an address); at most 8 "
    "masters, then 'other'.",
    ["master"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

#: REDIS_MASTER's label values, bounded: Sentinel may name any address, a label set must not grow
MAX_MASTER_LABELS = 8
_masters: set[str] = set()

CONFIG_RELOADS = Counter(
    "tokengate_gateway_config_reloads_total",
    "GATEWAY_CONFIG changes seen by a worker: applied, failed (invalid), refused (services).",
    ["outcome"],
    registry=REGISTRY,
)
# One numeric series per worker (pid in multiprocess mode), never a label holding the hash: the
# multiprocess mode keeps every label value a worker ever wrote, so an old hash would stay.
CONFIG_HASH = Gauge(
    "tokengate_gateway_config_hash",
    "First 48 bits of the SHA-256 of the GATEWAY_CONFIG this worker serves (0: no file).",
    multiprocess_mode="liveall",
    registry=REGISTRY,
)
CONFIG_LOADED_AT = Gauge(
    "tokengate_gateway_config_last_reload_timestamp_seconds",
    "When this worker last loaded GATEWAY_CONFIG successfully (start-up or reload).",
    multiprocess_mode="liveall",
    registry=REGISTRY,
)

_PROXY_GATEWAY = PROXY_DURATION.labels("gateway")
_PROXY_BACKEND = PROXY_DURATION.labels("backend")
_FAILURE_KINDS = ("connect", "timeout", "reset", "pool")


def failure_counters(service: str) -> dict[str, Any]:
    """One service's failure series, bound (and so exported at 0) when its pool is built."""
    return {kind: BACKEND_FAILURES.labels(service, kind) for kind in _FAILURE_KINDS}


POOL_IN_USE = DB_POOL.labels("in_use")
POOL_IDLE = DB_POOL.labels("idle")


def _prebind(counter: Counter, values: tuple[str, ...]) -> dict[str, Any]:
    # Bound at import so every series exists (at 0) from the first scrape: an alert on a rate
    # needs the series before the first event, and a rare outcome is no dict miss later.
    return {value: counter.labels(value) for value in values}


_LOGIN = _prebind(
    LOGINS,
    ("success", "invalid_credentials", "rate_limited", "unavailable", "backend_error", "invalid"),
)
_REFRESH = _prebind(
    REFRESHES,
    ("rotated", "retry", "reused-revoked", "family-revoked", "expired", "unknown", "key-mismatch"),
)
_REVOKED = _prebind(
    REVOCATIONS,
    (
        "logout",
        "logout-all",
        "user-revoked",
        "reuse",
        "sessions-ended",
        "account-disabled",
        "password-changed",
    ),
)
_LIMITED = _prebind(
    RATE_LIMITED,
    (
        "login-ip",
        "login-account",
        "refresh-ip",
        "user",
        "ip",
        "uploads-user",
        "uploads-ip",
        "uploads",
    ),
)
_REDIS = _prebind(
    REDIS_ERRORS, ("ratelimit", "revocation", "user_limit", "ip_limit", "dpop_replay", "epochs")
)
_DPOP = _prebind(DPOP_PROOFS, ("ok", "replay", "htu", "htm", "iat_window", "ath", "jkt", "nonce"))


def _child(table: dict[str, Any], counter: Counter, value: str) -> Any:
    child = table.get(value)
    if child is None:
        child = table[value] = counter.labels(value)
    return child


# -- the calls the rest of the gateway makes ---------------------------------------------------


AUDIT_EVENTS = Counter(
    "tokengate_gateway_audit_events_total",
    "Audit events by fate: written to PostgreSQL, or dropped (a full queue, a failed final flush).",
    ["fate"],
    registry=REGISTRY,
)
_AUDIT_WRITTEN = AUDIT_EVENTS.labels("written")
_AUDIT_DROPPED = AUDIT_EVENTS.labels("dropped")


def audit_written(count: int) -> None:
    _AUDIT_WRITTEN.inc(count)


def audit_dropped(count: int) -> None:
    _AUDIT_DROPPED.inc(count)


SIGNING_KEY_RELOADS = Counter(
    "tokengate_gateway_signing_keys_reloads_total",
    "Re-reads of the signing key file that changed the key set (changed) or were refused and "
    "kept the last good set (failed).",
    ["outcome"],
    registry=REGISTRY,
)


def signing_keys_reload(outcome: str) -> None:
    SIGNING_KEY_RELOADS.labels(outcome).inc()


def refresh_outcome(outcome: str) -> None:
    _child(_REFRESH, REFRESHES, str(outcome)).inc()


def revoked(reason: str, count: int = 1) -> None:
    if count:
        _child(_REVOKED, REVOCATIONS, reason).inc(count)


def rate_limited(limit: str) -> None:
    _child(_LIMITED, RATE_LIMITED, limit).inc()


def redis_error(operation: str) -> None:
    _child(_REDIS, REDIS_ERRORS, operation).inc()


def postgres_host(index: int, listed: int) -> None:
    """The pool's host now: ``index`` into the ``listed`` hosts (-1: not known yet)."""
    for i in range(-1, max(listed, 1)):
        POSTGRES_HOST.labels(str(i)).set(1 if i == index else 0)


def master_id(address: str) -> str:
    """A bounded, stable name for a Redis master: metric labels never carry an address (the
    operator matches it with ``/readyz``'s ``in_use.redis_master_id``)."""
    return hashlib.sha256(address.encode("utf-8")).hexdigest()[:12]


def redis_master(address: str | None) -> None:
    """The master in use now (``None``: Sentinel has named none yet)."""
    if address is not None:
        address = master_id(address)
    if address is not None and address not in _masters:
        if len(_masters) < MAX_MASTER_LABELS:
            _masters.add(address)
        else:
            address = "other"
    for known in (*_masters, "other"):
        REDIS_MASTER.labels(known).set(1 if known == address else 0)


def dpop_proof(outcome: str) -> None:
    _child(_DPOP, DPOP_PROOFS, outcome).inc()


def dpop_replay_round_trip(claims: int) -> None:
    DPOP_ROUND_TRIPS.inc()
    DPOP_CLAIMS.inc(claims)


def backend_failure(exc: BaseException, counters: dict[str, Any]) -> None:
    """Count a failed hop on one service's ``counters`` (:func:`failure_counters`)."""
    if isinstance(exc, PoolTimeout):
        kind = "pool"
    elif isinstance(exc, TimeoutError):
        kind = "timeout"
    elif isinstance(exc, BackendUnreachable | ConnectionRefusedError):
        kind = "connect"
    else:
        kind = "reset"
    counters[kind].inc()


def proxy_timing(started: float, backend_seconds: float) -> None:
    """One proxied request: ``started`` is its ``perf_counter()`` at entry."""
    total = time.perf_counter() - started
    _PROXY_BACKEND.observe(backend_seconds)
    _PROXY_GATEWAY.observe(max(total - backend_seconds, 0.0))


def _login_outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "success"
    if isinstance(exc, InvalidCredentials):
        return "invalid_credentials"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ServiceUnavailable):
        return "unavailable"
    if isinstance(exc, BadGateway):
        return "backend_error"
    return "invalid"


def count_login(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Decorates the login route: one ``logins_total`` increment per attempt."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            response = await endpoint(request)
        except GatewayError as exc:
            _LOGIN[_login_outcome(exc)].inc()
            raise
        except db.UNAVAILABLE as exc:
            # answered 503 by the app's database handlers (servicekit.db)
            if db.is_unavailable(exc):
                _LOGIN["unavailable"].inc()
            raise
        _LOGIN["success"].inc()
        return response

    return wrapper
