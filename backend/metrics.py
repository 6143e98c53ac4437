"""The backend's Prometheus metrics (all prefixed ``tokengate_backend_``).

- ``requests_total{route,method,status}``: every HTTP request, ``route`` a route template of
  this service or ``other``;
- ``internal_token_rejections_total{reason}``: requests refused by the internal-token check, by
  :class:`internal_auth.Reason` value;
- ``password_verifications_running`` / ``password_verifications_waiting`` (summed over workers)
  and ``password_verification_seconds``: argon2 checks, which are the backend's costliest work
  and are capped per process (``ARGON2_MAX_CONCURRENT``);
- ``internal_jwks_fetches_total{outcome}`` and ``internal_jwks_keys{kid}`` (1 trusted now, 0
  trusted before): the gateway's key set as this service sees it (``tokengate keys status``);
- ``build_info{version,python}``: always 1; which release and interpreter each instance runs;
- PostgreSQL failures: ``tokengate_postgres_errors_total{service="backend"}``.
"""

from __future__ import annotations

from collections.abc import Iterable

from internal_auth import Reason
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from servicekit import tls
from servicekit.metrics import build_info, postgres_errors

#: The backend's own registry, the one its metrics listener serves (never the default one, where
#: every family the process happened to import would show up, the gateway's as zeros).
REGISTRY = CollectorRegistry()
BUILD_INFO = build_info(REGISTRY, "backend")
POSTGRES_ERRORS = postgres_errors(REGISTRY)
# the hop's TLS families, shared by both services, served here with this service's own
REGISTRY.register(tls.HANDSHAKE_FAILURES)
REGISTRY.register(tls.CERT_EXPIRY)

REQUESTS = Counter(
    "tokengate_backend_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
TOKEN_REJECTIONS = Counter(
    "tokengate_backend_internal_token_rejections_total",
    "Requests refused by the internal-token check, by reason.",
    ["reason"],
    registry=REGISTRY,
)
PASSWORDS_RUNNING = Gauge(
    "tokengate_backend_password_verifications_running",
    "argon2 verifications running now.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
PASSWORDS_WAITING = Gauge(
    "tokengate_backend_password_verifications_waiting",
    "argon2 verifications waiting for a slot (ARGON2_MAX_CONCURRENT).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
PASSWORD_SECONDS = Histogram(
    "tokengate_backend_password_verification_seconds",
    "Time of one argon2 verification, slot wait excluded.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5),
    registry=REGISTRY,
)

JWKS_FETCHES = Counter(
    "tokengate_backend_internal_jwks_fetches_total",
    "Fetches of the gateway's published key set: ok, unchanged, refused (not signed by a "
    "trusted key, malformed), failed (unreachable).",
    ["outcome"],
    registry=REGISTRY,
)
JWKS_KEYS = Gauge(
    "tokengate_backend_internal_jwks_keys",
    "Keys this service trusts for internal tokens, by kid: 1 known now, 0 known before.",
    ["kid"],
    multiprocess_mode="liveall",
    registry=REGISTRY,
)

_REJECTED = {reason: TOKEN_REJECTIONS.labels(reason.value) for reason in Reason}


def token_rejected(reason: Reason) -> None:
    _REJECTED[reason].inc()


def jwks_fetched(outcome: str) -> None:
    JWKS_FETCHES.labels(outcome).inc()


def jwks_known(known: Iterable[str], before: Iterable[str] = ()) -> None:
    """Mark ``known`` kids 1 and the ``before`` ones no longer known 0 (a multiprocess gauge
    cannot drop a label value, so a dropped key reads 0 rather than vanishing)."""
    known = set(known)
    for kid in set(before) - known:
        JWKS_KEYS.labels(kid).set(0)
    for kid in known:
        JWKS_KEYS.labels(kid).set(1)


AUDIT_DROPPED = Counter(
    "tokengate_backend_audit_events_dropped_total",
    "Audit events dropped (a full queue, a failed final flush).",
    registry=REGISTRY,
)


def audit_dropped(count: int) -> None:
    AUDIT_DROPPED.inc(count)
