"""``/api/v1/auth/*``: login, refresh, logout, password change, and a user's own sessions.

Two client modes (docs/SECURITY.md, "Client modes"):

- cookie mode (browsers): the refresh token lives only in its ``HttpOnly`` cookie; refresh and
  logout check ``Origin``. With a DPoP proof at login the family is bound to the browser's key, and
  every later refresh and logout needs a proof from that key too, so a copied cookie is useless.
- body mode (API clients, RFC 9449): login with a ``DPoP`` proof and no ``Origin`` answers with the
  refresh token in the body, bound to the proof's key; refresh and logout send it back as JSON
  ``{"refresh_token": ...}`` with a proof from the same key. There is no ambient credential, so no
  ``Origin`` rule applies. An unbound refresh token never appears in a body.

Every failure raises a :mod:`gateway.errors` exception; ``app.py`` turns it into JSON.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from servicekit.bodies import parse_json, read_json, read_limited, refuse_foreign_body
from servicekit.logs import log_event
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import metrics
from gateway.audit.record import GATEWAY_ACTOR, record, refresh_event
from gateway.auth import bearer
from gateway.auth.backend_client import BackendUser
from gateway.auth.cookies import (
    check_login_origin,
    check_origin,
    clear_refresh_cookie,
    cookie_secure,
    read_refresh_cookie,
    request_origin,
    set_refresh_cookie,
)
from gateway.auth.ratelimit import account_key
from gateway.auth.tokens import AccessClaims
from gateway.dpop import InvalidDPoPProof
from gateway.errors import (
    Forbidden,
    InvalidCredentials,
    InvalidToken,
    NotFound,
    RateLimited,
    SessionRevoked,
    ValidationFailed,
)
from gateway.sessions.epochs import wait_until_past
from gateway.sessions.ledger import IssuedRefresh, Outcome
from gateway.state import gateway_state

logger = logging.getLogger("gateway.auth")

MAX_LOGIN_BODY = 4096
MAX_EMAIL = 320
MAX_PASSWORD = 1024
MIN_NEW_PASSWORD = 8  # the backend's policy (backend.users), checked here to spare a round trip
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _now() -> int:
    return int(time.time())


def _parse_credentials(data: Any) -> tuple[str, str]:
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


async def _issue_time(request: Request, user: BackendUser, checked_at: int) -> int:
    """The ``iat`` (and family ``created_at``) of what is minted on the strength of an account
    check that was sent at ``checked_at``.

    Dating tokens from the check, not from the mint, closes the race with an account change:
    a check answered before the change was sent before it, so its tokens predate the new epoch
    (``ceil`` of the change) and die with the rest, even if they are minted after it. A check
    that already saw the new epoch waits out that epoch's second and mints at it, so the token
    issued just after a change survives it.
    """
    gateway_state(request).epochs.apply(user.epochs)
    if user.token_epoch > checked_at:
        await wait_until_past(user.token_epoch)
    return max(checked_at, user.token_epoch)


async def _new_family(
    request: Request,
    account: BackendUser,
    *,
    user_id: str,
    checked_at: int,
    ip: str,
    jkt: str | None,
) -> tuple[IssuedRefresh, int, bool]:
    """A new refresh family for ``account`` (its roles, dated by :func:`_issue_time` from the
    check sent at ``checked_at``), the ``iat`` to mint its access token at, and whether its
    refresh token goes in the body: a bound client without ``Origin`` (a browser always sends
    ``Origin`` on a POST, and keeps the cookie)."""
    issued_at = await _issue_time(request, account, checked_at)
    issued = await gateway_state(request).ledger.create_family(
        user_id=user_id,
        roles=account.roles,
        user_agent=request.headers.get("user-agent"),
        ip=ip,
        now=issued_at,
        jkt=jkt,
    )
    return issued, issued_at, jkt is not None and "origin" not in request.headers


def _token_response(
    request: Request,
    *,
    issued: IssuedRefresh,
    roles: tuple[str, ...],
    jkt: str | None = None,
    body_mode: bool = False,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    access_iat: int | None = None,
) -> Response:
    """The new token pair: the access token (bound to ``jkt`` when given) in the body, the
    refresh token in the cookie, or in the body in body mode (bound clients only).
    ``access_iat``: see :func:`_issue_time`."""
    # The one rule this function must never break: a refresh token in a body is key-bound.
    if body_mode and jkt is None:
        raise RuntimeError("an unbound refresh token must never be returned in a body")
    state = gateway_state(request)
    tokens = state.tokens
    access, claims = tokens.issue_access(
        sub=issued.sub, sid=issued.sid, roles=roles, jkt=jkt, now=access_iat
    )
    refresh = tokens.encode_refresh(issued.as_claims())
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "DPoP" if jkt is not None else "Bearer",
        "expires_in": claims.exp - claims.iat,
    }
    if body_mode:
        body["refresh_token"] = refresh
        body["refresh_expires_in"] = max(issued.exp - _now(), 1)
    body.update(extra or {})
    nonce = state.dpop.nonce_headers() if jkt is not None else {}
    response = JSONResponse(body, headers={**NO_STORE, **nonce, **(headers or {})})
    if not body_mode:
        set_refresh_cookie(
            response,
            refresh,
            max_age=max(issued.exp - _now(), 1),
            secure=cookie_secure(request, state.settings.cookie_secure),
        )
    return response


async def authenticate(request: Request) -> AccessClaims:
    """The caller's access token (Bearer, or DPoP with a proof); revoked sessions, and tokens
    issued before their account last changed, fail."""
    state = gateway_state(request)
    return await bearer.authenticate_request(
        headers=request.scope["headers"],
        method=request.method,
        path=_request_path(request),
        verify=state.tokens.verify_access,
        dpop=state.dpop,
        revoked=state.revoked,
        token_denied=state.epochs.token_denied,
    )


def _request_path(request: Request) -> str:
    raw: bytes | None = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else request.url.path


async def _proof_jkt(request: Request) -> str | None:
    """The thumbprint of the key that signed this request's ``DPoP`` proof, ``None`` without
    one; a bad proof is a 400 (RFC 9449 §5)."""
    proofs = request.headers.getlist("dpop")
    if not proofs:
        return None
    proof = await gateway_state(request).dpop.for_token_endpoint(
        proofs, method=request.method, path=_request_path(request)
    )
    return proof.jkt


def _parse_refresh_body(raw: bytes) -> str:
    data = parse_json(raw)
    if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
        raise ValidationFailed("refresh_token must be a string")
    token: str = data["refresh_token"]
    return token


def _key_mismatch(request: Request, sid: str | None, mode: str) -> None:
    """A valid refresh token with a proof from another key (or none, for a bound family).

    Audited, not revoked: the token is useless without the key, and revoking would let whoever
    holds a copy log the real owner out."""
    log_event(
        logger,
        "dpop_key_mismatch",
        logging.WARNING,
        audit=True,
        sid=sid,
        mode=mode,
        path=request.url.path,
        ip=gateway_state(request).ratelimits.client_ip(request),
    )


@metrics.count_login
async def login(request: Request) -> Response:
    # Login CSRF: a cross-site form must not log the victim's browser into another account.
    state = gateway_state(request)
    check_login_origin(request, state.settings.cors_allowed_origins)
    limits = state.ratelimits
    email, password = _parse_credentials(
        await read_json(request, limit=MAX_LOGIN_BODY, pause=state.settings.body_read_timeout)
    )
    ip = limits.client_ip(request)
    try:
        # the per-IP limit counts every attempt, whatever its outcome
        await limits.check(limits.login_ip, "login-ip", ip)
        # The proof before the password check: a bad proof costs no argon2 and reveals nothing.
        # It also comes before the account's count, so a client's clock skew or a nonce round
        # trip never uses up the account's attempts.
        jkt = await _proof_jkt(request)
        account = account_key(email)
        headers = await limits.check(limits.login_account, "login-account", account)
    except RateLimited:
        record(request, "login_rate_limited", "failure", email=email)
        raise
    checked_at = _now()
    try:
        user = await state.backend.validate(email, password)
    except InvalidCredentials as exc:
        record(
            request, "login_failed", "failure", subject=exc.subject, email=email,
            details={"reason": exc.reason},
        )  # fmt: skip
        raise
    # the account's limit counts failures only: a right password gives its attempt back
    await limits.refund(limits.login_account, "login-account", account)
    issued, issued_at, body_mode = await _new_family(
        request, user, user_id=user.id, checked_at=checked_at, ip=ip, jkt=jkt
    )
    record(request, "login_succeeded", "success", subject=user.id, family=issued.sid)
    log_event(
        logger, "login_succeeded", sub=user.id, sid=issued.sid, dpop=jkt is not None, body=body_mode
    )
    return _token_response(
        request,
        issued=issued,
        roles=user.roles,
        jkt=jkt,
        body_mode=body_mode,
        extra={"user": {"id": user.id, "email": user.email, "roles": list(user.roles)}},
        headers=headers,
        access_iat=issued_at,
    )


async def refresh(request: Request) -> Response:
    state = gateway_state(request)
    settings = state.settings
    refuse_foreign_body(request.headers.raw)
    raw = await read_limited(request, MAX_LOGIN_BODY, pause=settings.body_read_timeout)
    body_mode = bool(raw.strip())
    if not body_mode:
        check_origin(request, settings.cors_allowed_origins)
    limits = state.ratelimits
    headers = await limits.check(limits.refresh_ip, "refresh-ip", limits.client_ip(request))
    token = (
        _parse_refresh_body(raw)
        if body_mode
        else read_refresh_cookie(request, secure=cookie_secure(request, settings.cookie_secure))
    )
    jkt = await _proof_jkt(request)
    if body_mode and jkt is None:
        raise InvalidDPoPProof("a refresh token in the body needs a DPoP proof")
    # body mode has no cookie to clear
    clear = not body_mode
    if token is None:
        raise InvalidToken(clear_cookie=clear)
    try:
        presented = state.tokens.verify_refresh(token)
    except InvalidToken:
        raise InvalidToken(clear_cookie=clear) from None
    # Status, roles and epochs are re-read before anything commits. If the backend cannot
    # answer, this raises 503 + Retry-After and the presented token stays valid: a hiccup must
    # not burn the rotation and turn the client's retry into "reuse".
    checked_at = _now()
    user = await state.backend.lifecycle(presented.sub)
    if user is None or not user.active:
        # disabled or deleted: this family ends here, whatever its epoch says
        if await state.ledger.revoke_family(presented.sid, reason="account-disabled", now=_now()):
            await state.revoked.revoke([presented.sid])
            metrics.revoked("account-disabled")
        log_event(logger, "refresh_refused", sid=presented.sid, reason="account-inactive")
        record(
            request, "refresh_refused", "failure", subject=presented.sub, family=presented.sid,
            actor=GATEWAY_ACTOR, details={"reason": "account-inactive"},
        )  # fmt: skip
        raise InvalidToken(clear_cookie=clear)
    state.epochs.apply(user.epochs)
    result = await state.ledger.rotate(
        presented, now=_now(), jkt=jkt, sessions_valid_from=user.session_epoch
    )
    log_event(logger, "refresh_rotation", sid=result.sid, outcome=str(result.outcome))
    record(
        request, *refresh_event(result.outcome), subject=presented.sub,
        family=result.sid or presented.sid, details={"outcome": str(result.outcome)},
    )  # fmt: skip
    metrics.refresh_outcome(result.outcome)
    if result.outcome is Outcome.KEY_MISMATCH:
        _key_mismatch(request, result.sid, "body" if body_mode else "cookie")
        raise InvalidToken(clear_cookie=clear)
    if (
        result.outcome in (Outcome.REUSED_REVOKED, Outcome.SESSIONS_ENDED)
        and result.sid is not None
    ):
        # RFC 9700 §4.14.2: a replayed refresh token means the family may be stolen; kill
        # its live access tokens everywhere, not only the refresh chain.
        await state.revoked.revoke([result.sid])
        metrics.revoked("reuse" if result.outcome is Outcome.REUSED_REVOKED else "sessions-ended")
    if result.outcome not in (Outcome.ROTATED, Outcome.RETRY) or result.successor is None:
        raise InvalidToken(clear_cookie=clear)
    # the family's age was checked in the rotation; the access token is dated from the check
    issued_at = await _issue_time(request, user, checked_at)
    return _token_response(
        request,
        issued=result.successor,
        # the roles of the account now, not those copied into the family at login
        roles=user.roles,
        jkt=result.jkt,
        body_mode=body_mode,
        headers=headers,
        access_iat=issued_at,
    )


async def logout(request: Request) -> Response:
    state = gateway_state(request)
    settings = state.settings
    refuse_foreign_body(request.headers.raw)
    raw = await read_limited(request, MAX_LOGIN_BODY, pause=settings.body_read_timeout)
    body_mode = bool(raw.strip())
    response = Response(status_code=204, headers=NO_STORE)
    if body_mode:
        token: str | None = _parse_refresh_body(raw)
    else:
        check_origin(request, settings.cors_allowed_origins)
        secure = cookie_secure(request, settings.cookie_secure)
        token = read_refresh_cookie(request, secure=secure)
        clear_refresh_cookie(response, secure=secure)
    jkt = await _proof_jkt(request)
    if body_mode and jkt is None:
        raise InvalidDPoPProof("a refresh token in the body needs a DPoP proof")
    if token is None:
        return response
    try:
        presented = state.tokens.verify_refresh(token)
    except InvalidToken:
        return response
    # the token's signature vouches for its sid; the ledger checks the family is its sub's
    family = await state.ledger.family_of(presented)
    if family is not None:
        if family.jkt != jkt:
            # the holder of a copied token (without the key) must not be able to end the session
            _key_mismatch(request, family.sid, "body" if body_mode else "cookie")
            raise InvalidToken(clear_cookie=not body_mode)
        await state.ledger.revoke_family(family.sid, reason="logout", now=_now())
        await state.revoked.revoke([family.sid])
        metrics.revoked("logout")
        log_event(logger, "logout", sid=family.sid)
        record(request, "logout", "success", subject=presented.sub, family=family.sid)
    return response


async def logout_all(request: Request) -> Response:
    refuse_foreign_body(request.headers.raw)
    claims = await authenticate(request)
    state = gateway_state(request)
    sids = await state.ledger.revoke_all_for_user(claims.sub, reason="logout-all", now=_now())
    await state.revoked.revoke({*sids, claims.sid})
    metrics.revoked("logout-all", len(sids))
    log_event(logger, "logout_all", sub=claims.sub, count=len(sids))
    record(request, "logout_all", "success", subject=claims.sub, details={"ended": len(sids)})
    response = Response(status_code=204, headers=NO_STORE)
    clear_refresh_cookie(response, secure=cookie_secure(request, state.settings.cookie_secure))
    return response


async def list_sessions(request: Request) -> Response:
    claims = await authenticate(request)
    state = gateway_state(request)
    # The session epoch lives with the account (the backend's): families an operator ended from
    # the command line are still rows here until their next refresh, and must not show as live.
    user = await state.backend.lifecycle(claims.sub)
    if user is None or not user.active:
        raise InvalidToken()
    sessions = await state.ledger.list_sessions(
        claims.sub, now=_now(), sessions_valid_from=user.session_epoch
    )
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
                    # DPoP: the session can only be refreshed with this key (RFC 7638 thumbprint)
                    "key_bound": s.jkt is not None,
                    "jkt": s.jkt,
                }
                for s in sessions
            ]
        },
        headers=NO_STORE,
    )


async def delete_session(request: Request) -> Response:
    refuse_foreign_body(request.headers.raw)
    claims = await authenticate(request)
    raw_id = request.path_params["session_id"]
    try:
        sid = str(uuid.UUID(raw_id))
    except ValueError:
        raise NotFound("no such session") from None
    state = gateway_state(request)
    revoked = await state.ledger.revoke_user_family(
        claims.sub, sid, reason="user-revoked", now=_now()
    )
    if not revoked:
        raise NotFound("no such session")
    await state.revoked.revoke([sid])
    metrics.revoked("user-revoked")
    log_event(logger, "session_revoked", sub=claims.sub, sid=sid)
    record(request, "session_revoked", "success", subject=claims.sub, family=sid)
    return Response(status_code=204, headers=NO_STORE)


def _parse_password_change(data: Any) -> tuple[str, str]:
    if not isinstance(data, dict) or set(data) != {"current_password", "new_password"}:
        raise ValidationFailed("body must be {current_password, new_password}")
    current, new = data["current_password"], data["new_password"]
    if not isinstance(current, str) or not isinstance(new, str):
        raise ValidationFailed("current_password and new_password must be strings")
    if not current or len(current) > MAX_PASSWORD:
        raise ValidationFailed("current_password is not valid")
    if not MIN_NEW_PASSWORD <= len(new) <= MAX_PASSWORD:
        raise ValidationFailed(
            f"new_password must be {MIN_NEW_PASSWORD} to {MAX_PASSWORD} characters"
        )
    return current, new


async def change_password(request: Request) -> Response:
    """``POST /api/v1/auth/password``: the caller stays logged in, every other session ends.

    The backend sets the new hash and moves the user's epochs in one statement, which ends every
    family and access token of the user, the caller's included; the caller then gets a new
    family (created after the epoch) with a fresh access token and refresh cookie, so their
    session carries on under a new id. A wrong current password is a bare 403 (a 401 would tell
    the client to refresh and retry) and counts against the per-account login limit; a change
    that succeeds does not.
    """
    state = gateway_state(request)
    if request_origin(request) is not None:
        # browsers always send Origin on a POST; non-browser clients send none
        check_origin(request, state.settings.cors_allowed_origins)
    claims = await authenticate(request)
    current, new = _parse_password_change(
        await read_json(request, limit=MAX_LOGIN_BODY, pause=state.settings.body_read_timeout)
    )
    user = await state.backend.lifecycle(claims.sub)
    if user is None or not user.active:
        raise SessionRevoked(headers={"WWW-Authenticate": bearer.INVALID_TOKEN_CHALLENGE})
    limits = state.ratelimits
    ip = limits.client_ip(request)
    await limits.check(limits.login_ip, "login-ip", ip)
    account = account_key(user.email)
    headers = await limits.check(limits.login_account, "login-account", account)
    checked_at = _now()
    try:
        changed = await state.backend.change_password(
            claims.sub, current, new, ip=ip, ua=request.headers.get("user-agent")
        )
    except Forbidden:
        log_event(logger, "password_change_refused", logging.WARNING, sub=claims.sub)
        raise Forbidden(headers=headers) from None
    # a refused current password is a guess and stays counted; a change that succeeds is not
    await limits.refund(limits.login_account, "login-account", account)
    await state.revoked.publish_epochs(changed.epochs)
    ended = await state.ledger.revoke_all_for_user(
        claims.sub, reason="password-changed", now=_now()
    )
    # the epoch already ends them; revoking in the ledger too keeps the sessions list true and
    # kills their access tokens through the revoked-session set as well
    await state.revoked.revoke({*ended, claims.sid})
    metrics.revoked("password-changed", len(ended))
    # a DPoP-bound session stays bound to the same key
    issued, issued_at, body_mode = await _new_family(
        request, changed, user_id=claims.sub, checked_at=checked_at, ip=ip, jkt=claims.jkt
    )
    log_event(logger, "password_changed", sub=claims.sub, sid=issued.sid, ended=len(ended))
    return _token_response(
        request,
        issued=issued,
        roles=changed.roles,
        jkt=claims.jkt,
        body_mode=body_mode,
        headers=headers,
        access_iat=issued_at,
    )


routes = [
    Route("/api/v1/auth/login", login, methods=["POST"]),
    Route("/api/v1/auth/refresh", refresh, methods=["POST"]),
    Route("/api/v1/auth/logout", logout, methods=["POST"]),
    Route("/api/v1/auth/logout-all", logout_all, methods=["POST"]),
    Route("/api/v1/auth/password", change_password, methods=["POST"]),
    Route("/api/v1/auth/sessions", list_sessions, methods=["GET"]),
    Route("/api/v1/auth/sessions/{session_id}", delete_session, methods=["DELETE"]),
]
