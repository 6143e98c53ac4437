"""``GET /api/v1/admin/audit`` (the ``admin`` role) and ``GET /api/v1/auth/events`` (a user's
own events), answered by the gateway itself from the audit trail: neither is ever proxied.

Newest first, paged by a cursor (the last event's id: the next page is everything older), never
by an offset, so events written between two pages neither shift nor repeat them.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from servicekit.audit import query, row_json
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth.routes import NO_STORE, authenticate
from gateway.errors import Forbidden, ValidationFailed
from gateway.state import gateway_state

ADMIN_PATH = "/api/v1/admin/audit"
EVENTS_PATH = "/api/v1/auth/events"
DEFAULT_LIMIT = 50
#: a user's own page: the recent events the demo page shows
EVENTS_MAX_LIMIT = 50
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CURSOR = re.compile(r"[1-9][0-9]{0,18}")
_LIMIT = re.compile(r"[0-9]{1,6}")
_ADMIN_PARAMS = frozenset({"user", "type", "outcome", "since", "until", "after", "limit"})
_EVENTS_PARAMS = frozenset({"type", "after", "limit"})


def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ValidationFailed(f"{name}: given more than once")
    return values[0] if values else None


def _check_names(request: Request, allowed: frozenset[str]) -> None:
    unknown = set(request.query_params.keys()) - allowed
    if unknown:
        raise ValidationFailed(f"unknown query parameter: {sorted(unknown)[0][:32]}")


def _limit(request: Request, maximum: int) -> int:
    raw = _one(request, "limit")
    if raw is None:
        return min(DEFAULT_LIMIT, maximum)
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses (a 500)
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ValidationFailed(f"limit: an integer from 1 to {maximum}")
    return int(raw)


def _cursor(request: Request) -> int | None:
    raw = _one(request, "after")
    if raw is None:
        return None
    if not _CURSOR.fullmatch(raw) or int(raw) > 2**63 - 1:
        raise ValidationFailed("after: the next cursor of a previous page")
    return int(raw)


def _type(request: Request) -> str | None:
    raw = _one(request, "type")
    if raw is not None and not _TYPE.fullmatch(raw):
        raise ValidationFailed("type: an event type (snake_case)")
    return raw


def _time(request: Request, name: str) -> datetime | None:
    raw = _one(request, name)
    if raw is None:
        return None
    try:
        if len(raw) > 40:
            raise ValueError(name)
        value = datetime.fromisoformat(raw)
        # in UTC now: year 1 at +14:00 is before the first representable instant (a 500 later)
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationFailed(f"{name}: an ISO 8601 date-time") from None


async def _page(request: Request, limit: int, **filters: Any) -> Response:
    state = gateway_state(request)
    async with state.pool.acquire() as conn:
        rows = await query(conn, limit=limit + 1, **filters)
    more = len(rows) > limit
    rows = rows[:limit]
    body = {
        "items": [row_json(r) for r in rows],
        "next": str(rows[-1]["id"]) if more and rows else None,
    }
    return JSONResponse(body, headers=NO_STORE)


async def admin_audit(request: Request) -> Response:
    claims = await authenticate(request)
    # Defence in depth alongside any route-table policy: the role is checked here too.
    if "admin" not in claims.roles:
        raise Forbidden("the admin role is required")
    _check_names(request, _ADMIN_PARAMS)
    user = _one(request, "user")
    if user is not None:
        try:
            user = str(uuid.UUID(user))
        except ValueError:
            raise ValidationFailed("user: a user id (uuid)") from None
    outcome = _one(request, "outcome")
    if outcome is not None and outcome not in ("success", "failure"):
        raise ValidationFailed("outcome: success or failure")
    return await _page(
        request,
        _limit(request, gateway_state(request).settings.audit_query_max_limit),
        subject=user,
        type=_type(request),
        outcome=outcome,
        since=_time(request, "since"),
        until=_time(request, "until"),
        before_id=_cursor(request),
    )


async def own_events(request: Request) -> Response:
    claims = await authenticate(request)
    _check_names(request, _EVENTS_PARAMS)
    return await _page(
        request,
        _limit(request, EVENTS_MAX_LIMIT),
        subject=claims.sub,
        type=_type(request),
        before_id=_cursor(request),
    )


routes = [
    Route(ADMIN_PATH, admin_audit, methods=["GET"]),
    Route(EVENTS_PATH, own_events, methods=["GET"]),
]
