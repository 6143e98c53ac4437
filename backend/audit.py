"""Audit events: credential checks, account changes and rejected internal tokens, as structured
JSON lines and, for the catalogue's events (docs/AUDIT.md), as rows of the audit trail.

Account changes write their row in the transaction of the change (:meth:`UserStore._update
<backend.users.UserStore>`); a rejected internal token or a refused password change, which change
nothing, go through the background writer on ``app.state.audit``. Only outcomes, reasons and
identifiers are recorded; never a token, a password or a hash.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import Any

from internal_auth import Reason
from servicekit.audit import BatchWriter, Event
from servicekit.logs import log_event, request_id_var
from servicekit.tracing import current_trace

from backend import metrics

logger = logging.getLogger("backend.audit")

#: the ``actor`` of changes made with ``tokengate users ...``
OPERATOR = "operator"
#: headers of the internal 401 of a refused credential check: the gateway's audit event names
#: the account (docs/AUDIT.md, ``login_failed``); its public answer stays the generic 401
SUBJECT_HEADER = "X-Audit-Subject"
REASON_HEADER = "X-Audit-Reason"


#: the client (address, user agent) of the request being served, as the gateway relayed it
#: (``X-Audit-Client-Ip``, ``X-Audit-User-Agent`` on the internal password route): for the audit
#: event only; it decides nothing
client_var: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "audit_client", default=(None, None)
)


def relayed_client(headers: Mapping[str, str]) -> None:
    client_var.set((headers.get("x-audit-client-ip"), headers.get("x-audit-user-agent")))


def refused_headers(user_id: object | None, reason: str) -> dict[str, str]:
    if user_id is None:
        return {}
    return {SUBJECT_HEADER: str(user_id), REASON_HEADER: reason}


def event(
    type: str,
    outcome: str,
    *,
    subject: str | None,
    actor: str | None,
    details: Mapping[str, Any] | None = None,
) -> Event:
    """An event of this request (its request and trace ids), or of a command."""
    trace = current_trace.get()
    ip, user_agent = client_var.get()
    return Event.make(
        type,
        outcome,
        subject=subject,
        actor=actor,
        ip=ip,
        user_agent=user_agent,
        service="backend",
        request_id=request_id_var.get(),
        trace_id=trace.trace_id if trace is not None else None,
        details=details,
    )


def submit(scope: Mapping[str, Any], item: Event) -> None:
    """Queue an event that changes nothing (the app's background writer, if started)."""
    app = scope.get("app")
    writer: BatchWriter | None = getattr(getattr(app, "state", None), "audit", None)
    if writer is not None:
        writer.submit(item)


def credential_check(outcome: str, *, user_id: str | None = None) -> None:
    """``outcome`` is ``success``, ``failure``, ``disabled`` or ``superseded`` (the right
    password, but another one was set while it was being checked: refused)."""
    level = logging.INFO if outcome == "success" else logging.WARNING
    log_event(logger, "credential_check", level, outcome=outcome, user_id=user_id)


def account_changed(action: str, *, user_id: str, actor: str, **fields: Any) -> None:
    """Every change to an account: ``action`` is ``disabled``, ``enabled``, ``roles_changed``,
    ``password_changed`` or ``sessions_ended``; ``actor`` is ``operator`` (the command line) or
    ``user`` (the account holder through the gateway)."""
    log_event(
        logger,
        "account_changed",
        logging.WARNING,
        action=action,
        user_id=user_id,
        actor=actor,
        **fields,
    )


def password_change_refused(*, user_id: str) -> None:
    """A password change whose current password did not verify (a possible guessing attempt)."""
    log_event(logger, "password_change_refused", logging.WARNING, user_id=user_id)


def token_rejected(reason: Reason, scope: Mapping[str, Any], iss: str | None) -> None:
    """The ``on_reject`` hook of :class:`internal_auth.InternalAuthMiddleware`."""
    metrics.token_rejected(reason)
    submit(
        scope,
        event(
            "internal_token_refused",
            "failure",
            subject=None,
            actor=None,
            details={
                "reason": str(reason),
                "method": scope.get("method"),
                "path": scope.get("path"),
            },
        ),
    )
    log_event(
        logger,
        "internal_token_rejected",
        logging.WARNING,
        reason=str(reason),
        iss=iss,
        method=scope.get("method"),
        path=scope.get("path"),
    )
