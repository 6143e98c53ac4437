"""``/api/v1/auth/*``: login, refresh, logout, and a user's own sessions.

Login and refresh return the access token in the body and the refresh token only in its cookie.
Every failure raises a :mod:`gateway.errors` exception; ``app.py`` turns it into JSON.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from servicekit import db
from servicekit.logs import log_event
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import bearer
from gateway.cookies import (
    check_origin,
    clear_refresh_cookie,
    cookie_secure,
    read_refresh_cookie,
    set_refresh_cookie,
)
from gateway.errors import (
    BadRequest,
    InvalidToken,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
)
from gateway.ratelimit import account_key
from gateway.sessions import IssuedRefresh, Ledger, Outcome
from gateway.settings import Settings
from gateway.tokens import AccessClaims, TokenService

logger = logging.getLogger("gateway.auth")

MAX_LOGIN_BODY = 4096
MAX_EMAIL = 320
MAX_PASSWORD = 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Endpoint = Callable[[Request], Awaitable[Response]]


def _db_guard(endpoint: Endpoint) -> Endpoint:
    """PostgreSQL gone or too slow (:data:`servicekit.db.UNAVAILABLE`): 503, never a 500."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except db.UNAVAILABLE as exc:
            if not db.is_unavailable(exc):
                raise
            request.app.state.db_outages.record(exc, path=request.url.path)
            raise ServiceUnavailable() from None

    return wrapper


def _now() -> int:
    return int(time.time())


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge()
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge()
    return bytes(body)


def _parse_credentials(raw: bytes) -> tuple[str, str]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body must be JSON") from None
    if not isinstance(data, dict):
        raise ValidationFailed("request body must be a JSON object")
    email, password = data.get("email"), data.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise ValidationFailed("email and password must be strings")
    email = email.strip()
    if not email or "@" not in email or len(email) > MAX_EMAIL:
        raise ValidationFailed("email is not valid")
    if not password or len(password) > MAX_PASSWORD:
        raise ValidationFailed("password is not valid")
    return email, password


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _tokens(request: Request) -> TokenService:
    tokens: TokenService = request.app.state.tokens
    return tokens


def _ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def _token_response(
    request: Request,
    *,
    issued: IssuedRefresh,
    roles: tuple[str, ...],
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    settings = _settings(request)
    tokens = _tokens(request)
    access, claims = tokens.issue_access(sub=issued.sub, sid=issued.sid, roles=roles)
    refresh = tokens.encode_refresh(
        sub=issued.sub, sid=issued.sid, jti=issued.jti, iat=issued.iat, exp=issued.exp
    )
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": claims.exp - claims.iat,
    }
    body.update(extra or {})
    response = JSONResponse(body, headers={**NO_STORE, **(headers or {})})
    set_refresh_cookie(
        response,
        refresh,
        max_age=max(issued.exp - _now(), 1),
        secure=cookie_secure(request, settings.cookie_secure),
    )
    return response


def authenticate(request: Request) -> AccessClaims:
    """The caller's access token from ``Authorization: Bearer``; revoked sessions fail."""
    return bearer.authenticate(
        request.scope["headers"], _tokens(request).verify_access, request.app.state.revoked
    )


@_db_guard
async def login(request: Request) -> Response:
    limits = request.app.state.ratelimits
    raw = await _read_limited(request, MAX_LOGIN_BODY)
    email, password = _parse_credentials(raw)
    ip = limits.client_ip(request)
    await limits.check(limits.login_ip, "login-ip", ip)
    headers = await limits.check(limits.login_account, "login-account", account_key(email))
    user = await request.app.state.backend.validate(email, password)
    issued = await _ledger(request).create_family(
        user_id=user.id,
        roles=user.roles,
        user_agent=request.headers.get("user-agent"),
        ip=ip,
        now=_now(),
    )
    log_event(logger, "login_succeeded", sub=user.id, sid=issued.sid)
    return _token_response(
        request,
        issued=issued,
        roles=user.roles,
        extra={"user": {"id": user.id, "email": user.email, "roles": list(user.roles)}},
        headers=headers,
    )


@_db_guard
async def refresh(request: Request) -> Response:
    settings = _settings(request)
    check_origin(request, settings.cors_allowed_origins)
    limits = request.app.state.ratelimits
    headers = await limits.check(limits.refresh_ip, "refresh-ip", limits.client_ip(request))
    token = read_refresh_cookie(request)
    if token is None:
        raise InvalidToken(clear_cookie=True)
    try:
        presented = _tokens(request).verify_refresh(token)
    except InvalidToken:
        raise InvalidToken(clear_cookie=True) from None
    result = await _ledger(request).rotate(presented.jti, now=_now())
    log_event(logger, "refresh_rotation", sid=result.sid, outcome=str(result.outcome))
    if result.outcome is Outcome.REUSED_REVOKED and result.sid is not None:
        # RFC 9700 §4.14.2: a replayed refresh token means the family may be stolen; kill
        # its live access tokens everywhere, not only the refresh chain.
        await request.app.state.revoked.revoke([result.sid])
    if result.outcome not in (Outcome.ROTATED, Outcome.RETRY) or result.successor is None:
        raise InvalidToken(clear_cookie=True)
    return _token_response(request, issued=result.successor, roles=result.roles, headers=headers)


@_db_guard
async def logout(request: Request) -> Response:
    settings = _settings(request)
    check_origin(request, settings.cors_allowed_origins)
    token = read_refresh_cookie(request)
    response = Response(status_code=204, headers=NO_STORE)
    clear_refresh_cookie(response, secure=cookie_secure(request, settings.cookie_secure))
    if token is None:
        return response
    try:
        presented = _tokens(request).verify_refresh(token)
    except InvalidToken:
        return response
    family = await _ledger(request).family_of(presented.jti)
    if family is not None:
        sid, _ = family
        await _ledger(request).revoke_family(sid, reason="logout", now=_now())
        await request.app.state.revoked.revoke([sid])
        log_event(logger, "logout", sid=sid)
    return response


@_db_guard
async def logout_all(request: Request) -> Response:
    claims = authenticate(request)
    sids = await _ledger(request).revoke_all_for_user(claims.sub, reason="logout-all", now=_now())
    await request.app.state.revoked.revoke({*sids, claims.sid})
    log_event(logger, "logout_all", sub=claims.sub, count=len(sids))
    response = Response(status_code=204, headers=NO_STORE)
    clear_refresh_cookie(response, secure=cookie_secure(request, _settings(request).cookie_secure))
    return response


@_db_guard
async def list_sessions(request: Request) -> Response:
    claims = authenticate(request)
    sessions = await _ledger(request).list_sessions(claims.sub, now=_now())
    return JSONResponse(
        {
            "sessions": [
                {
                    "id": s.id,
                    "created_at": s.created_at.isoformat(),
                    "last_used_at": s.last_used_at.isoformat(),
                    "expires_at": s.expires_at.isoformat(),
                    "user_agent": s.user_agent,
                    "ip": s.ip,
                    "current": s.id == claims.sid,
                }
                for s in sessions
            ]
        },
        headers=NO_STORE,
    )


@_db_guard
async def delete_session(request: Request) -> Response:
    claims = authenticate(request)
    raw_id = request.path_params["session_id"]
    try:
        sid = str(uuid.UUID(raw_id))
    except ValueError:
        raise NotFound("no such session") from None
    revoked = await _ledger(request).revoke_user_family(
        claims.sub, sid, reason="user-revoked", now=_now()
    )
    if not revoked:
        raise NotFound("no such session")
    await request.app.state.revoked.revoke([sid])
    log_event(logger, "session_revoked", sub=claims.sub, sid=sid)
    return Response(status_code=204, headers=NO_STORE)


routes = [
    Route("/api/v1/auth/login", login, methods=["POST"]),
    Route("/api/v1/auth/refresh", refresh, methods=["POST"]),
    Route("/api/v1/auth/logout", logout, methods=["POST"]),
    Route("/api/v1/auth/logout-all", logout_all, methods=["POST"]),
    Route("/api/v1/auth/sessions", list_sessions, methods=["GET"]),
    Route("/api/v1/auth/sessions/{session_id}", delete_session, methods=["DELETE"]),
]
