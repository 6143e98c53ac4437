"""The backend application: ``create_app(settings)``.

Every route except ``/healthz`` and ``/readyz`` sits behind :class:`internal_auth.
InternalAuthMiddleware`: ``/internal/auth/`` (credential check, password change) needs scope
``auth_validate`` and ``/internal/lifecycle/`` (an account's status, roles and epochs) needs
``refresh_lifecycle``, both with the gateway's own identity; ``/v1/`` needs ``user_request``.
Identity comes only from the verified token — no request header can change who the caller is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import AsyncIterator

from internal_auth import (
    InternalAuthMiddleware,
    KeySet,
    Principal,
    RemoteKeySet,
    ReplayCache,
    TokenScope,
    Verifier,
    get_principal,
)
from servicekit import db, otel, tls
from servicekit.audit import BatchWriter, writer_id
from servicekit.bodies import BodyError, refuse_foreign_body
from servicekit.config import ConfigError
from servicekit.http_errors import body_error, error_response, http_exception
from servicekit.logs import configure_logging, log_event
from servicekit.metrics import RequestCounter, RouteTemplates, mark_worker_stopped, postgres_error
from servicekit.request_id import RequestIdMiddleware
from servicekit.tracing import TraceContextMiddleware
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend import audit, metrics
from backend.errors import (
    BackendError,
    CurrentPasswordRejected,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from backend.notes import MAX_BODY, MAX_TITLE, NoteStore
from backend.passwords import Passwords
from backend.settings import Settings
from backend.state import BackendState, backend_state
from backend.users import UserStore, WrongPassword, change_password, check_credentials
from backend.validation import (
    cursor,
    cursor_param,
    int_param,
    json_object,
    required_string,
    string_field,
    uuid_path,
)

logger = logging.getLogger("backend.app")

#: the most accounts one page of ``/internal/lifecycle/epochs`` holds
EPOCHS_PAGE_MAX = 10_000


def _principal_user_id(request: Request) -> tuple[Principal, uuid.UUID]:
    principal = get_principal(request)
    try:
        return principal, uuid.UUID(principal.sub)
    except ValueError:
        # a system identity (the gateway's own sub) is not a user
        raise Forbidden() from None


# --- routes -------------------------------------------------------------------------------


async def validate_credentials(request: Request) -> Response:
    data = await json_object(request, allowed={"email", "password"}, required={"email", "password"})
    email = required_string(data, "email", min_len=0, max_len=1024)
    password = required_string(data, "password", min_len=0, max_len=4096)
    state = backend_state(request)
    user = await check_credentials(state.users, state.passwords, email, password)
    return JSONResponse(user.lifecycle())


async def password_change(request: Request) -> Response:
    """The gateway relays a user's own password change; ``user_id`` comes from the user's
    verified access token at the gateway. A wrong current password is a 403 with nothing more."""
    data = await json_object(
        request,
        allowed={"user_id", "current_password", "new_password"},
        required={"user_id", "current_password", "new_password"},
    )
    user_id = required_string(data, "user_id", min_len=1, max_len=64)
    current = required_string(data, "current_password", min_len=0, max_len=4096)
    new = required_string(data, "new_password", min_len=0, max_len=4096)
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        raise CurrentPasswordRejected() from None
    audit.relayed_client(request.headers)
    try:
        state = backend_state(request)
        user = await change_password(state.users, state.passwords, uid, current, new)
    except WrongPassword:
        audit.submit(
            request.scope,
            audit.event("password_change_refused", "failure", subject=user_id, actor=user_id),
        )
        raise CurrentPasswordRejected() from None
    return JSONResponse(user.lifecycle())


async def lifecycle(request: Request) -> Response:
    """Status, roles and epochs of one account: the gateway asks before every rotation."""
    user = await backend_state(request).users.by_id(uuid_path(request, "user_id"))
    if user is None:
        raise NotFound()
    return JSONResponse(user.lifecycle())


async def lifecycle_epochs(request: Request) -> Response:
    """Every account whose token epoch is at or after ``since``: a gateway that starts, or
    reconnects to Redis, rebuilds what the broadcasts it missed would have told it.

    One page of at most ``limit`` accounts; ``next`` is the cursor of the following page (pass
    it as ``after``), ``null`` on the last one. Before paging, everything past 10,000 accounts
    was silently left out, and a gateway started then let their old access tokens through."""
    since = int_param(request, "since", default=0, low=0, high=2**62)
    # the default is the old single answer's size, for a gateway that does not page yet
    limit = int_param(request, "limit", default=EPOCHS_PAGE_MAX, low=1, high=EPOCHS_PAGE_MAX)
    after = cursor_param(request, "after")
    users = await backend_state(request).users.epochs_since(since, limit=limit, after=after)
    last = users[-1] if len(users) == limit else None
    return JSONResponse(
        {
            "epochs": [
                {"id": str(u.id), "session_epoch": u.session_epoch, "token_epoch": u.token_epoch}
                for u in users
            ],
            "next": cursor(last.token_epoch, last.id) if last is not None else None,
        }
    )


async def me(request: Request) -> Response:
    _, user_id = _principal_user_id(request)
    user = await backend_state(request).users.by_id(user_id)
    if user is None or user.disabled_at is not None:
        raise Unauthorized()
    return JSONResponse(user.public())


async def list_users(request: Request) -> Response:
    principal, _ = _principal_user_id(request)
    if "admin" not in principal.roles:
        raise Forbidden("this route needs the admin role")
    limit = int_param(request, "limit", default=50, low=1, high=200)
    offset = int_param(request, "offset", default=0, low=0, high=10_000_000)
    users, total = await backend_state(request).users.page(limit=limit, offset=offset)
    return JSONResponse(
        {"items": [u.public() for u in users], "total": total, "limit": limit, "offset": offset}
    )


async def list_notes(request: Request) -> Response:
    _, owner = _principal_user_id(request)
    limit = int_param(request, "limit", default=50, low=1, high=200)
    offset = int_param(request, "offset", default=0, low=0, high=10_000_000)
    notes = await backend_state(request).notes.list(owner, limit=limit, offset=offset)
    return JSONResponse({"items": [n.public() for n in notes], "limit": limit, "offset": offset})


async def create_note(request: Request) -> Response:
    _, owner = _principal_user_id(request)
    data = await json_object(request, allowed={"title", "body"}, required={"title"})
    title = required_string(data, "title", min_len=1, max_len=MAX_TITLE)
    body = string_field(data, "body", min_len=0, max_len=MAX_BODY) or ""
    note = await backend_state(request).notes.create(owner, title, body)
    return JSONResponse(note.public(), status_code=201)


async def get_note(request: Request) -> Response:
    _, owner = _principal_user_id(request)
    note = await backend_state(request).notes.get(owner, uuid_path(request, "note_id"))
    if note is None:
        raise NotFound()
    return JSONResponse(note.public())


async def update_note(request: Request) -> Response:
    _, owner = _principal_user_id(request)
    note_id = uuid_path(request, "note_id")
    data = await json_object(request, allowed={"title", "body"}, required=set())
    title = string_field(data, "title", min_len=1, max_len=MAX_TITLE)
    body = string_field(data, "body", min_len=0, max_len=MAX_BODY)
    note = await backend_state(request).notes.update(owner, note_id, title=title, body=body)
    if note is None:
        raise NotFound()
    return JSONResponse(note.public())


async def delete_note(request: Request) -> Response:
    refuse_foreign_body(request.headers.raw)
    _, owner = _principal_user_id(request)
    if not await backend_state(request).notes.delete(owner, uuid_path(request, "note_id")):
        raise NotFound()
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    database = backend_state(request).pool
    problem = None
    try:
        # a standby (a pool that reached one, a demoted primary) cannot take the writes
        writable = await asyncio.wait_for(database.fetchval("SELECT NOT pg_is_in_recovery()"), 2.0)
    except Exception:
        writable, problem = False, "unreachable"
    # which DATABASE_URL host, by its index in the list: a bounded answer
    in_use = {"postgres_host": database.host_index}
    if writable is not True:
        log_event(logger, "readiness_failed", logging.WARNING, dependency="postgres")
        return JSONResponse(
            # as the gateway's: true, or why not
            {
                "status": "unavailable",
                "checks": {"postgres": problem or "read-only (a standby)"},
                "in_use": in_use,
            },
            status_code=503,
            headers={"Retry-After": "2"},
        )
    return JSONResponse({"status": "ready", "checks": {"postgres": True}, "in_use": in_use})


# --- errors -------------------------------------------------------------------------------


async def backend_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, BackendError):  # registered for BackendError only
        raise exc
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # The type only: a traceback in a response or a log line can carry request data.
    log_event(logger, "unhandled_error", logging.ERROR, exc_type=type(exc).__name__)
    return error_response(500, "internal_error", "internal error")


def _trusted_keys(settings: Settings) -> KeySet:
    """The pinned keys, or (INTERNAL_JWKS_URL) the pinned keys plus the gateway's published set,
    each fetched set checked against the keys already trusted (internal_auth.remote)."""
    metrics.jwks_known(settings.public_keys.kids)
    if settings.jwks_url is None:
        return settings.public_keys
    known: list[str] = list(settings.public_keys.kids)

    def fetched(outcome: str) -> None:
        metrics.jwks_fetched(outcome)
        if outcome == "ok":
            metrics.jwks_known(remote.kids, before=known)
            known[:] = remote.kids

    ssl_context = None
    if settings.jwks_ca_file is not None:
        # only the pinned CA: with cafile given, the system store is not loaded
        try:
            ssl_context = ssl.create_default_context(cafile=settings.jwks_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"INTERNAL_JWKS_CA_FILE: cannot load it ({exc})") from None
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
    remote = RemoteKeySet(
        settings.public_keys,
        settings.jwks_url,
        refresh_interval=settings.jwks_refresh_interval,
        cooldown=settings.jwks_cooldown,
        ssl_context=ssl_context,
        on_fetch=fetched,
    )
    return remote


def create_app(settings: Settings, *, passwords: Passwords | None = None) -> Starlette:
    """Build the backend. ``passwords`` lets tests use cheaper argon2 parameters."""
    configure_logging(settings.log_level, settings.log_format)
    keys = _trusted_keys(settings)
    verifier = Verifier(
        keys,
        issuer=settings.gateway_id,
        audience=settings.backend_id,
        leeway=settings.leeway,
        # Single use (issue 10): a captured internal token is refused the second time.
        replay_cache=(
            ReplayCache(settings.replay_cache_size) if settings.replay_cache_size else None
        ),
    )
    hasher = passwords or Passwords(settings.argon2, settings.argon2_max_concurrent)
    # app.state, typed; installed below before any request or lifespan can read it
    state = BackendState()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # DB_POOL_MIN defaults to 0: the service starts (and answers /readyz with 503) while
        # PostgreSQL is down, and connects once it comes back.
        pool = await db.Database.connect(settings.database_url, settings.pool)
        state.pool = pool
        state.users = UserStore(pool, audit_writer=writer_id("backend"))
        state.audit = BatchWriter(pool, writer_id("backend"), on_drop=metrics.audit_dropped)
        state.audit.start()
        state.notes = NoteStore(pool)
        state.passwords = hasher
        if isinstance(keys, RemoteKeySet):
            await keys.start()
        log_event(logger, "backend_started")
        # the served certificate's expiry gauge (nothing to report without --ssl-certfile)
        sampler = asyncio.create_task(tls.expiry_sampler(), name="tls-expiry")
        try:
            yield
        finally:
            sampler.cancel()
            mark_worker_stopped()
            otel.shutdown()
            if isinstance(keys, RemoteKeySet):
                await keys.close()
            await state.audit.close()
            await pool.close()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/internal/auth/validate", validate_credentials, methods=["POST"]),
        Route("/internal/auth/password", password_change, methods=["POST"]),
        Route("/internal/lifecycle/users/{user_id}", lifecycle, methods=["GET"]),
        Route("/internal/lifecycle/epochs", lifecycle_epochs, methods=["GET"]),
        Route("/v1/me", me, methods=["GET"]),
        Route("/v1/users", list_users, methods=["GET"]),
        Route("/v1/notes", list_notes, methods=["GET"]),
        Route("/v1/notes", create_note, methods=["POST"]),
        Route("/v1/notes/{note_id}", get_note, methods=["GET"]),
        Route("/v1/notes/{note_id}", update_note, methods=["PATCH"]),
        Route("/v1/notes/{note_id}", delete_note, methods=["DELETE"]),
    ]
    middleware = [
        Middleware(RequestIdMiddleware),
        # private service: its only caller is the gateway, which already decided the trace
        Middleware(TraceContextMiddleware, trusted=lambda peer: True),
        *otel.setup("tokengate-backend", settings.otel_endpoint),
        Middleware(
            RequestCounter,
            routes=RouteTemplates(r.path for r in routes),
            counter=metrics.REQUESTS,
            status_label=str,
        ),
        Middleware(
            InternalAuthMiddleware,
            verifier=verifier,
            rules=[
                ("/v1/", TokenScope.USER_REQUEST),
                ("/internal/auth/", TokenScope.AUTH_VALIDATE),
                ("/internal/lifecycle/", TokenScope.REFRESH_LIFECYCLE),
            ],
            public_paths=("/healthz", "/readyz"),
            on_reject=audit.token_rejected,
        ),
    ]
    handlers = {
        BackendError: backend_error,
        BodyError: body_error,
        HTTPException: http_exception,
        Exception: unexpected_error,
        **db.exception_handlers(
            retry_after=ServiceUnavailable.retry_after,
            message=ServiceUnavailable.message,
            otherwise=unexpected_error,
        ),
    }
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    # No 307 to the same path with or without a slash: its Location is built from the Host
    # header, and an unknown path is a plain JSON 404 (found by the contract fuzzer).
    app.router.redirect_slashes = False
    app.state = state
    state.db_outages = db.Outages(
        logger, on_record=postgres_error(metrics.POSTGRES_ERRORS, "backend")
    )
    state.body_timeout = settings.body_read_timeout
    return app
