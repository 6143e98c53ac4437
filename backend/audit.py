"""Audit events: credential checks and rejected internal tokens, as structured JSON lines.

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
    """``outcome`` is ``success``, ``failure`` or ``disabled``."""
    level = logging.INFO if outcome == "success" else logging.WARNING
    log_event(logger, "credential_check", level, outcome=outcome, user_id=user_id)


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
