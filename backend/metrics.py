"""The backend's Prometheus metrics (all prefixed ``tokengate_backend_``).

- ``requests_total{route,method,status}``: every HTTP request, ``route`` a route template of
  this service or ``other``;
- ``internal_token_rejections_total{reason}``: requests refused by the internal-token check, by
  :class:`internal_auth.Reason` value;
- ``password_verifications_running`` / ``password_verifications_waiting`` (summed over workers)
  and ``password_verification_seconds``: argon2 checks, which are the backend's costliest work
  and are capped per process (``ARGON2_MAX_CONCURRENT``);
- PostgreSQL failures: ``tokengate_postgres_errors_total{service="backend"}``.
"""

from __future__ import annotations

from internal_auth import Reason
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "tokengate_backend_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
TOKEN_REJECTIONS = Counter(
    "tokengate_backend_internal_token_rejections_total",
    "Requests refused by the internal-token check, by reason.",
    ["reason"],
)
PASSWORDS_RUNNING = Gauge(
    "tokengate_backend_password_verifications_running",
    "argon2 verifications running now.",
    multiprocess_mode="livesum",
)
PASSWORDS_WAITING = Gauge(
    "tokengate_backend_password_verifications_waiting",
    "argon2 verifications waiting for a slot (ARGON2_MAX_CONCURRENT).",
    multiprocess_mode="livesum",
)
PASSWORD_SECONDS = Histogram(
    "tokengate_backend_password_verification_seconds",
    "Time of one argon2 verification, slot wait excluded.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5),
)

_REJECTED = {reason: TOKEN_REJECTIONS.labels(reason.value) for reason in Reason}


def token_rejected(reason: Reason) -> None:
    _REJECTED[reason].inc()
