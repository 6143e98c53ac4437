"""Recording one audit event from a request: the catalogue is docs/AUDIT.md.

The event is built here, with the client address as the rate limiter sees it, the user agent,
the request id and the trace id, and queued to the background writer
(:class:`servicekit.audit.BatchWriter`): a request never waits for PostgreSQL. Callers pass ids
and outcomes only; this module never receives a password or a token.
"""

from __future__ import annotations

from typing import Any

from servicekit.audit import Event, email_hmac
from servicekit.emails import normalise_email
from servicekit.logs import request_id_var
from servicekit.tracing import current_trace
from starlette.requests import Request

from gateway.state import gateway_state

#: ``actor`` of the events the gateway decides on its own (reuse detection, account checks)
GATEWAY_ACTOR = "gateway"

#: the ledger's rotation outcomes (``gateway.sessions.ledger.Outcome`` values) as catalogue
#: types; every other outcome is ``refresh_refused`` with the outcome as its reason
REFRESH_EVENTS = {
    "rotated": ("refresh_rotated", "success"),
    "retry": ("refresh_retried", "success"),
    "reused-revoked": ("refresh_reused", "failure"),
    "key-mismatch": ("dpop_key_mismatch", "failure"),
}


def refresh_event(outcome: str) -> tuple[str, str]:
    return REFRESH_EVENTS.get(outcome, ("refresh_refused", "failure"))


def record(
    request: Request,
    type: str,
    outcome: str,
    *,
    subject: str | None = None,
    family: str | None = None,
    actor: str | None = None,
    email: str | None = None,
    service: str | None = None,
    rule: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Queue one event. ``email`` is used only when there is no ``subject`` (an address that
    matched no account) and only as its keyed hash. ``actor`` defaults to the subject.

    The route table's denies (the multi-service issue) are to call this as ``record(request,
    "policy_denied", "failure", subject=<sub or None>, service=<the route's service>,
    rule=<the rule's name>)``: allows go to metrics only (docs/AUDIT.md)."""
    state = gateway_state(request)
    writer = getattr(state, "audit", None)
    if writer is None:  # AUDIT_ENABLED=false
        return
    hashed = (
        email_hmac(state.settings.audit_hmac_key, normalise_email(email))
        if email is not None and subject is None
        else None
    )
    trace = current_trace.get()
    writer.submit(
        Event.make(
            type,
            outcome,
            actor=actor or subject,
            subject=subject,
            subject_hmac=hashed,
            family=family,
            ip=state.ratelimits.client_ip(request),
            user_agent=request.headers.get("user-agent"),
            request_id=request_id_var.get(),
            trace_id=trace.trace_id if trace is not None else None,
            service=service,
            rule=rule,
            details=details,
        )
    )
