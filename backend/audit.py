"""Audit events: credential checks, account changes and rejected internal tokens, as structured
JSON lines.

Only outcomes, reasons and identifiers are logged; never a token, a password or a hash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from internal_auth import Reason
from servicekit.logs import log_event

from backend import metrics

logger = logging.getLogger("backend.audit")


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
    log_event(
        logger,
        "internal_token_rejected",
        logging.WARNING,
        reason=str(reason),
        iss=iss,
        method=scope.get("method"),
        path=scope.get("path"),
    )
