"""The gateway's one edge layer: request id, access log, security headers, CORS, error mapping.

Every request crosses exactly this layer, outside everything else (Starlette's own error and
exception middleware included), so whatever answers — a route, the proxy, Starlette's 404, an
error handler, a crash — leaves with the request id, the security headers and one access-log
line, and never as the server's plain-text 500.

Proxied requests (``/api/v1/...`` paths no gateway route can claim) go straight from here to
:func:`gateway.proxy.handler.proxy_request`: they skip Starlette's routing and its two middleware
layers,
which were about a quarter of the gateway's CPU per proxied request. Every other path goes to the
Starlette app as before. Which paths are proxied is worked out once from the app's own routes
(:func:`proxy_only_paths`), so a new gateway route under ``/api/v1/`` keeps working unchanged; a
path the fast test does not claim is still routed by Starlette, which has the same catch-all.

- Request id: :func:`servicekit.logs.request_id_or_new` picks it; it goes to
  ``scope["state"]["request_id"]``, to :data:`servicekit.logs.request_id_var` for log lines, and
  back to the client in ``X-Request-Id``.
- Trace context: :func:`servicekit.tracing.begin` (a trusted proxy's ``traceparent``, or a new
  trace), current for the whole request.
- Metrics: ``on_response(path, method, status)`` once per request (the request counter).
- Access log: one structured line per request (path without its query string), only when the
  ``gateway.access`` logger is enabled for INFO: at a disabled level nothing is timed or built.
- Security headers: :func:`gateway.security_headers.security_headers`.
- CORS: requests with an ``Origin`` header go through Starlette's own
  :class:`~starlette.middleware.cors.CORSMiddleware` (its semantics, unchanged); requests without
  one, which CORS does not concern, skip it.
- Errors: :func:`error_response` maps every exception to JSON ``{"error": {"code", "message"}}``;
  it is also the Starlette exception handler, so there is one mapping for both paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from servicekit import db
from servicekit.bodies import BodyError
from servicekit.forwarded import Network, client_and_scheme, is_trusted
from servicekit.http_errors import body_error, http_exception
from servicekit.http_errors import error_response as json_error
from servicekit.logs import REQUEST_ID_HEADER, log_event, request_id_or_new, request_id_var
from servicekit.tracing import begin as begin_trace
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.cookies import clear_refresh_cookie, cookie_secure
from gateway.errors import GatewayError, ServiceUnavailable
from gateway.security_headers import security_headers
from gateway.state import gateway_state

__all__ = ["Edge", "error_response", "proxy_only_paths"]

access_logger = logging.getLogger("gateway.access")
logger = logging.getLogger("gateway.edge")

PUBLIC_PREFIX = "/api/v1/"
_ORIGIN = b"origin"
# Set in the ASGI scope once the status line is on its way (a namespaced key of our own).
_STATUS = "tokengate.response_status"


async def error_response(request: Request, exc: Exception) -> Response:
    """The one mapping from an exception to the JSON error a client sees.

    :class:`GatewayError` carries its status, code, message and headers (and may clear the
    refresh cookie); a refused body (:class:`servicekit.bodies.BodyError`) carries its own;
    Starlette's :class:`HTTPException` (unknown route, wrong method) keeps its status; anything
    else is a 500 whose log line names only the exception type (a traceback can carry tokens or
    passwords from local variables).
    """
    if isinstance(exc, GatewayError):
        response = json_error(exc.status, exc.code, exc.message, exc.headers)
        if exc.clear_cookie:
            secure = cookie_secure(request, gateway_state(request).settings.cookie_secure)
            clear_refresh_cookie(response, secure=secure)
        return response
    if isinstance(exc, BodyError):
        return await body_error(request, exc)
    if isinstance(exc, HTTPException):
        return await http_exception(request, exc)
    if isinstance(exc, db.UNAVAILABLE):
        # PostgreSQL gone or too slow, on any route: 503, never a 500 (servicekit.db decides,
        # and hands back anything of those classes that is not an outage).
        return await _database_unavailable(request, exc)
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Every one of these is a bug (the suite's fuzzers fail on any 5xx): the type only.
    log_event(logger, "unhandled_error", logging.ERROR, exc_type=type(exc).__name__)
    return json_error(500, "internal_error", "internal error")


_database_unavailable = next(
    iter(
        db.exception_handlers(
            retry_after=ServiceUnavailable.retry_after,
            message=ServiceUnavailable.message,
            otherwise=_unexpected,
        ).values()
    )
)


def proxy_only_paths(routes: Sequence[BaseRoute], catch_all: Route) -> Callable[[str], bool]:
    """A test for "only the proxy's catch-all can match this path", built from ``routes``.

    Each other route claims its literal path (a ``Route`` without parameters) or the literal
    prefix before its first parameter (a ``Route`` with parameters, a ``Mount``). A route whose
    claim covers all of ``/api/v1/`` disables the fast path altogether.
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    for route in routes:
        if route is catch_all:
            continue
        if isinstance(route, Mount):
            prefix = route.path + "/"
        elif isinstance(route, Route):
            if "{" not in route.path:
                exact.add(route.path)
                continue
            prefix = route.path[: route.path.index("{")]
        else:  # a route type we cannot reason about: let Starlette route everything
            return lambda path: False
        if PUBLIC_PREFIX.startswith(prefix):
            return lambda path: False
        if prefix.startswith(PUBLIC_PREFIX):
            prefixes.append(prefix)
    frozen, claimed = frozenset(exact), tuple(prefixes)

    def proxy_only(path: str) -> bool:
        return (
            path.startswith(PUBLIC_PREFIX) and path not in frozen and not path.startswith(claimed)
        )

    return proxy_only


class Edge:
    """The outermost ASGI layer of the gateway (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        proxy: ASGIApp,
        proxy_only: Callable[[str], bool],
        trusted_proxies: Sequence[Network],
        cors: Mapping[str, Any],
        on_response: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.app = app
        self.proxy = proxy
        self.proxy_only = proxy_only
        self.trusted_proxies = tuple(trusted_proxies)
        self.cors = CORSMiddleware(self._dispatch, **cors)
        # Called once per request with (path, method, status) after the answer: metrics.
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # WebSockets are refused by design: the gateway authenticates, mints and forwards
            # one request at a time, and a long-lived connection would outlive the revocation of
            # the token that opened it. Closing before accepting answers the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        # One pass over the request headers for what the edge needs (this runs on every request).
        rid_value: bytes | None = None
        cors = False
        for name, value in headers:
            if name == REQUEST_ID_HEADER:
                if rid_value is None:
                    rid_value = value
            elif name == _ORIGIN:
                cors = True
        rid = request_id_or_new(rid_value)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid
        client = scope.get("client")
        peer: str | None = client[0] if client else None
        # W3C trace context: only a trusted proxy may choose the trace (servicekit.tracing).
        end_trace = begin_trace(scope, trusted=self._trusted_peer(peer))
        path: str = scope["path"]
        https = self._https(scope, peer)
        rid_header = (REQUEST_ID_HEADER, rid.encode("ascii"))
        status = 0

        async def edge_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = scope[_STATUS] = message["status"]
                out = security_headers(message.get("headers", ()), path=path, https=https)
                out.append(rid_header)
                message["headers"] = out
            await send(message)

        log = access_logger.isEnabledFor(logging.INFO)
        start = time.perf_counter() if log else 0.0
        token = request_id_var.set(rid)
        try:
            if cors:
                await self.cors(scope, receive, edge_send)
            else:
                await self._dispatch(scope, receive, edge_send)
        except Exception as exc:
            if status:
                # The status line is out: nothing left to answer with. Starlette re-raises after
                # its own handler answered; anything else cut a response short.
                if not isinstance(exc, GatewayError | HTTPException):
                    log_event(
                        logger, "response_aborted", logging.ERROR, exc_type=type(exc).__name__
                    )
            else:  # a failure outside both paths' own mapping: still JSON, never plain text
                response = await error_response(Request(scope, receive), exc)
                await response(scope, receive, edge_send)
        finally:
            if self.on_response is not None:
                self.on_response(path, scope["method"], status or 500)
            if log:
                log_event(
                    access_logger,
                    "request",
                    method=scope["method"],
                    path=path,
                    status=status or 500,
                    duration_ms=round((time.perf_counter() - start) * 1000, 3),
                    user_id=state.get("user_id"),
                )
            request_id_var.reset(token)
            end_trace()

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.proxy_only(scope["path"]):
            # Starlette maps errors itself, with the same error_response.
            await self.app(scope, receive, send)
            return
        try:
            await self.proxy(scope, receive, send)
        except Exception as exc:
            if _STATUS in scope:
                raise
            # Answered here, inside the CORS layer, so a browser can read its errors too.
            response = await error_response(Request(scope, receive), exc)
            await response(scope, receive, send)

    def _trusted_peer(self, peer: str | None) -> bool:
        return (
            bool(self.trusted_proxies)
            and peer is not None
            and is_trusted(peer, self.trusted_proxies)
        )

    def _https(self, scope: Scope, peer: str | None) -> bool:
        scheme: str = scope.get("scheme", "http")
        headers = scope["headers"]
        return client_and_scheme(peer, scheme, headers, self.trusted_proxies)[1] == "https"
