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

__all__ = ["PROBE_PATH", "REFUSED_CODE", "InternalAuthMiddleware", "RejectHook", "get_principal"]

ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]

#: ``on_reject(reason, scope, iss)``: called for every refused request, for audit logging.
#: ``iss`` is set only when the token's signature verified (so it is not attacker-chosen).
RejectHook = Callable[[Reason, ASGIScope, "str | None"], None]

_HEADER_NAME = HEADER.lower().encode("latin-1")

#: Answered by the middleware itself to a token of scope ``probe``, so every service that uses
#: it can prove to the gateway that they agree on keys, issuer and audience without writing a
#: route. Not under ``/v1/``: the gateway never proxies a client's request to it.
PROBE_PATH = "/.well-known/tokengate/probe"

#: The ``error.code`` of every refused internal token: distinct from any code a service's own
#: routes answer (``invalid_credentials``, ``unauthorized``), so the gateway can tell "the
#: service does not trust me" (an operator's problem) from "the user is wrong".
REFUSED_CODE = "internal_token_refused"


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")


# One fixed body per status: which check failed stays in the audit log (on_reject), never in
# the response, so a caller cannot probe the verifier check by check.
_UNAUTHORIZED = _error_body(REFUSED_CODE, "Authentication required.")
_PROBE_OK = json.dumps({"status": "ok"}).encode("utf-8")

# The reasons the probe names. A token reaches the issuer, audience and time checks only after
# its signature verified, so only a holder of the gateway's key learns those; anyone else learns
# at most what is wrong with the shape of the token they sent (missing, malformed, alg, kid).
_PROBE_REASONS = frozenset(Reason) - {Reason.NO_RULE, Reason.KEY_INVALID}
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

    Responses: 401 ``{"error": {"code": "internal_token_refused", ...}}`` for a missing, invalid or
    already used token (and for unlisted paths), 403 ``{"error": {"code": "forbidden", ...}}``
    for a valid token without the needed scope, 503 with ``Retry-After`` when the verifier's
    single-use cache is full. WebSocket connections are closed (code 1008) unless public.

    ``probe_path`` (default :data:`PROBE_PATH`; ``None`` turns it off) is answered here, never
    by the app: ``GET`` with a valid token of scope ``probe`` is 200 ``{"status": "ok"}``; a
    refused one is the usual 401/403 with ``error.reason`` added (``unknown_kid``,
    ``bad_signature``, ``wrong_issuer``, ``wrong_audience``, ``expired``, ...), so the gateway's
    readiness can say *why* this service does not trust it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: Verifier,
        rules: Iterable[tuple[str, TokenScope | Collection[TokenScope]]],
        public_paths: Collection[str] = ("/healthz", "/readyz"),
        on_reject: RejectHook | None = None,
        probe_path: str | None = PROBE_PATH,
    ) -> None:
        self.app = app
        self._probe_path = probe_path
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
        if scope["path"] == self._probe_path:
            await self._probe(scope, send)
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
        return self._verify(scope, required)

    def _verify(self, scope: ASGIScope, required: TokenScope | frozenset[TokenScope]) -> Principal:
        path: str = scope["path"]
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

    async def _probe(self, scope: ASGIScope, send: Send) -> None:
        try:
            if scope["method"] != "GET":
                raise InternalAuthError(Reason.UNBOUND_REQUEST, "the probe is GET only")
            try:
                self._verify(scope, TokenScope.PROBE)
            except InternalAuthError as exc:
                # a key the gateway just staged: learn it as for any route, then judge again
                if exc.reason is not Reason.UNKNOWN_KID or not await self._learn_kid(scope):
                    raise
                self._verify(scope, TokenScope.PROBE)
        except InternalAuthError as exc:
            self._report(exc.reason, scope, exc.iss)
            reason = exc.reason if exc.reason in _PROBE_REASONS else None
            await self._send_error(send, exc.reason, probe_reason=reason)
            return
        await _send_json(send, 200, _PROBE_OK, [])

    def _report(self, reason: Reason, scope: ASGIScope, iss: str | None) -> None:
        if self._on_reject is not None:
            self._on_reject(reason, scope, iss)

    @staticmethod
    async def _send_error(
        send: Send, reason: Reason, *, probe_reason: Reason | None = None
    ) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if reason is Reason.WRONG_SCOPE:
            status, body = 403, _FORBIDDEN
        elif reason is Reason.REPLAY_CACHE_FULL:
            # Capacity, not the caller's fault: the gateway passes the 503 on and clients retry.
            status, body = 503, _BUSY
            headers.append((b"retry-after", b"1"))
        else:
            status, body = 401, _UNAUTHORIZED
        if probe_reason is not None:
            error = json.loads(body)
            error["error"]["reason"] = probe_reason.value
            body = json.dumps(error).encode("utf-8")
        await _send_json(send, status, body, headers)


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        *headers,
        (b"content-length", str(len(body)).encode("ascii")),
    ]
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
