"""An ASGI guard: verify ``X-Internal-Auth`` for every request before the app sees it.

Pure ASGI, so it wraps any Starlette or FastAPI app (or anything else ASGI) unchanged::

    from fastapi import Depends, FastAPI, Request
    from internal_auth import InternalAuthMiddleware, Principal, TokenScope, get_principal

    app = FastAPI()
    app.add_middleware(
        InternalAuthMiddleware,
        verifier=verifier,
        rules=[
            # a public route opts into the gateway's anonymous scope explicitly
            ("/v1/public", {TokenScope.USER_REQUEST, TokenScope.ANONYMOUS}),
            ("/v1", TokenScope.USER_REQUEST),
            ("/internal/auth", TokenScope.AUTH_VALIDATE),
        ],
    )

    def principal(request: Request) -> Principal:
        return get_principal(request)

    @app.get("/v1/me")
    async def me(who: Principal = Depends(principal)) -> dict[str, str]:
        return {"id": who.sub}

In Starlette, use ``Middleware(InternalAuthMiddleware, verifier=..., rules=...)`` and read
``request.state.principal`` (or ``get_principal(request)``) in the endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, MutableMapping
from typing import Any, Protocol

from .errors import InternalAuthError, Reason
from .remote import RemoteKeySet, token_kid
from .scopes import TokenScope
from .tokens import HEADER, Principal, Verifier

__all__ = ["InternalAuthMiddleware", "RejectHook", "get_principal"]

ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]

#: ``on_reject(reason, scope, iss)``: called for every refused request, for audit logging.
#: ``iss`` is set only when the token's signature verified (so it is not attacker-chosen).
RejectHook = Callable[[Reason, ASGIScope, "str | None"], None]

_HEADER_NAME = HEADER.lower().encode("latin-1")


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")


# One fixed body per status: which check failed stays in the audit log (on_reject), never in
# the response, so a caller cannot probe the verifier check by check.
_UNAUTHORIZED = _error_body("unauthorized", "Authentication required.")
_FORBIDDEN = _error_body("forbidden", "Not allowed.")
_BUSY = _error_body("service_unavailable", "Too many requests in flight, retry shortly.")


class InternalAuthMiddleware:
    """Require a valid internal token on every HTTP request except ``public_paths``.

    ``rules`` maps path prefixes to the :class:`TokenScope` a route needs, or to a collection of
    scopes any one of which it accepts; the first matching prefix wins. Prefixes match on segment
    boundaries: ``/v1/files`` matches ``/v1/files`` and ``/v1/files/x``, never ``/v1/filesystem``
    (a string prefix would hand ``/pub``'s scopes to ``/public-leak``); a prefix ending in ``/``
    matches the paths below it. A path matching no rule and not public is refused (fail closed):
    a new route is protected before anyone remembers to list it. The token is verified with
    ``htm`` = ``scope["method"]`` and ``htu`` = ``scope["path"]``. On success the
    :class:`Principal` is at ``scope["state"]["principal"]`` (``request.state.principal``).

    Responses: 401 ``{"error": {"code": "unauthorized", ...}}`` for a missing, invalid or
    already used token (and for unlisted paths), 403 ``{"error": {"code": "forbidden", ...}}``
    for a valid token without the needed scope, 503 with ``Retry-After`` when the verifier's
    single-use cache is full. WebSocket connections are closed (code 1008) unless public.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: Verifier,
        rules: Iterable[tuple[str, TokenScope | Collection[TokenScope]]],
        public_paths: Collection[str] = ("/healthz", "/readyz"),
        on_reject: RejectHook | None = None,
    ) -> None:
        self.app = app
        self._verifier = verifier
        self._rules: tuple[tuple[str, TokenScope | frozenset[TokenScope]], ...] = tuple(
            (prefix, _scopes(scope)) for prefix, scope in rules
        )
        for prefix, _ in self._rules:
            if not prefix.startswith("/"):
                raise ValueError(f"rule prefix {prefix!r} must start with '/'")
        self._public = frozenset(public_paths)
        self._on_reject = on_reject

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in self._public:
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            # No internal WebSocket routes exist; refuse rather than guess a binding.
            self._report(Reason.NO_RULE, scope, None)
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            try:
                principal = self._authenticate(scope)
            except InternalAuthError as exc:
                # A key set fetched from the gateway may not know a key it just staged or
                # promoted: wait (not block) for one single-flight fetch, then verify once more.
                if exc.reason is not Reason.UNKNOWN_KID or not await self._learn_kid(scope):
                    raise
                principal = self._authenticate(scope)
        except InternalAuthError as exc:
            self._report(exc.reason, scope, exc.iss)
            await self._send_error(send, exc.reason)
            return
        state = dict(scope.get("state") or {})
        state["principal"] = principal
        # A copy, so the principal never lands in state shared with other requests.
        await self.app({**scope, "state": state}, receive, send)

    def _authenticate(self, scope: ASGIScope) -> Principal:
        path: str = scope["path"]
        required = next((s for prefix, s in self._rules if _under(path, prefix)), None)
        if required is None:
            raise InternalAuthError(Reason.NO_RULE, "path matches no rule")
        values = [value for name, value in scope["headers"] if name.lower() == _HEADER_NAME]
        if not values:
            raise InternalAuthError(Reason.MISSING, "no internal token")
        if len(values) > 1:
            # Two tokens: intermediaries may pick different ones, so accept neither.
            raise InternalAuthError(Reason.MALFORMED, "more than one internal token")
        return self._verifier.verify(values[0], scope=required, htm=scope["method"], htu=path)

    async def _learn_kid(self, scope: ASGIScope) -> bool:
        keys = self._verifier.keys
        if not isinstance(keys, RemoteKeySet):
            return False
        values = [value for name, value in scope["headers"] if name.lower() == _HEADER_NAME]
        kid = token_kid(values[0]) if len(values) == 1 else None
        return kid is not None and await keys.learn(kid)

    def _report(self, reason: Reason, scope: ASGIScope, iss: str | None) -> None:
        if self._on_reject is not None:
            self._on_reject(reason, scope, iss)

    @staticmethod
    async def _send_error(send: Send, reason: Reason) -> None:
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        if reason is Reason.WRONG_SCOPE:
            status, body = 403, _FORBIDDEN
        elif reason is Reason.REPLAY_CACHE_FULL:
            # Capacity, not the caller's fault: the gateway passes the 503 on and clients retry.
            status, body = 503, _BUSY
            headers.append((b"retry-after", b"1"))
        else:
            status, body = 401, _UNAUTHORIZED
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _scopes(scope: TokenScope | Collection[TokenScope]) -> TokenScope | frozenset[TokenScope]:
    if isinstance(scope, str):
        return TokenScope(scope)
    scopes = frozenset(TokenScope(s) for s in scope)
    if not scopes:
        raise ValueError("a rule needs at least one scope")
    return next(iter(scopes)) if len(scopes) == 1 else scopes


def _under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it, on a segment boundary."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


class _HasScope(Protocol):
    @property
    def scope(self) -> Mapping[str, Any]: ...


def get_principal(request: _HasScope) -> Principal:
    """The :class:`Principal` the middleware verified for this request.

    Works with a Starlette ``Request``/``WebSocket`` or anything with an ASGI ``scope``; use it
    as a FastAPI dependency. Raises :class:`InternalAuthError` (``MISSING``) when the request
    did not pass through :class:`InternalAuthMiddleware`, so a mis-wired app fails closed.
    """
    state = request.scope.get("state")
    principal = state.get("principal") if isinstance(state, Mapping) else None
    if not isinstance(principal, Principal):
        raise InternalAuthError(Reason.MISSING, "no verified principal on this request")
    return principal
