"""The reverse proxy: every ``/api/v1/{path}`` that is not an auth route goes to a service.

One request, top to bottom in :func:`proxy_request`:

0. route: map the path to the service's ``/v1/...``, refusing anything that could escape it
   (before any token work, so garbage costs nothing and unknown auth routes are a plain 404);
   with a policy (``GATEWAY_CONFIG``), the longest route prefix names the service (none: 404);
1. authenticate: the ``Authorization: Bearer`` access token (RFC 6750 §2.1), or a DPoP-bound one
   with ``Authorization: DPoP`` and a proof for this request (RFC 9449 §7, :mod:`gateway.dpop`);
   with a policy, a request without ``Authorization`` is anonymous and passes only where a
   ``public`` allow rule matches (then the per-IP limit), and a bad token is a 401 everywhere;
2. check revocation: the token's session (``sid``) against the local revoked set and its ``iat``
   against its user's epoch (account disabled, password or roles changed; no I/O), then the
   optional per-user limit; with a policy, its rules decide (no allow rule, or a deny: 403);
3. mint: an internal token for that service's audience, bound to this method and that exact
   service path, naming the allowing rule (``pol``);
4. forward: method, path, query, end-to-end headers and the body, streamed, size-capped;
5. stream back: status, end-to-end headers and the body as it arrives.

The backend hop is :class:`gateway.proxy.upstream.UpstreamPool`, a keep-alive HTTP/1.1 pool with
llhttp reading the answers: it costs a fraction of the CPU of ``aiohttp.ClientSession``, which was
itself about ten times faster than ``httpx.AsyncClient`` here (figures in ``bench/README.md``).
httpx stays the client everywhere else (tests, CLI, the gateway's own credential check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable

from internal_auth import TokenScope
from servicekit import otel
from servicekit.bodies import BodyTimeout, PayloadTooLarge, framing
from servicekit.forwarded import client_and_scheme
from servicekit.logs import log_event, new_request_id
from servicekit.tracing import outbound_headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from gateway import metrics
from gateway.audit.record import record
from gateway.auth.bearer import CHALLENGE, authenticate_request
from gateway.auth.tokens import AccessClaims
from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayBusy,
    GatewayError,
    GatewayTimeout,
    NotFound,
    Unauthorized,
)
from gateway.policy import Caller
from gateway.proxy.backend import Service
from gateway.proxy.headers import INTERNAL_AUTH, Header, request_headers, response_headers
from gateway.proxy.paths import BackendPath, backend_path
from gateway.proxy.uploads import Place
from gateway.proxy.upstream import InvalidRequest, PoolTimeout, Response, UpstreamError
from gateway.state import GatewayState, scope_state

logger = logging.getLogger("gateway.proxy")

# Answers up to this size are read whole and sent in one write; larger ones (or ones of unknown
# size) stream through in the chunks they arrive in, so memory stays flat for big transfers.
# (Request bodies have their own size, PROXY_BUFFER_BYTES.)
_BUFFER_LIMIT = 64 * 1024
# The catch-all route of every path the gateway does not answer itself.
PROXY_PATH = "/api/v1/{path:path}"
# The gateway's own routes: never proxied, whatever the method.
GATEWAY_PREFIX = "/api/v1/auth/"


class _ClientGone(Exception):
    """The client disconnected while we were reading its body."""


class _Stalled(Exception):
    """The client sent no part of its body for longer than BODY_READ_TIMEOUT."""


class _ClientWentAway(UpstreamError):
    """Ends the backend's answer early: the client it was for disconnected."""


# An upload place that holds nothing: what requests with a buffered body (or none) use.
_NO_PLACE = Place(None, "", "")


async def proxy_request(scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    app_state = scope_state(scope)
    proxy = app_state.proxy
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    request_state = scope.setdefault("state", {})
    method: str = scope["method"]

    # 0. Route.
    if scope["path"].startswith(GATEWAY_PREFIX):
        _refuse_gateway_path(scope)
    target = backend_path(scope.get("raw_path"), scope["path"])
    client = scope.get("client")
    ip, proto = client_and_scheme(
        client[0] if client else None, scope.get("scheme", "http"), headers, proxy.trusted_proxies
    )

    # 1. Authenticate (Bearer, or DPoP with a proof for this request), 2. check revocation
    #    (a logged-out session's access tokens die at once, and so do those issued before their
    #    account last changed), then the per-user limit; with a policy, its decision.
    rule: str | None = None
    # the minter's own audience (BACKEND_ID) unless a route table names the service's
    audience: str | None = None
    claims: AccessClaims | None
    if proxy.policy is None:
        # Without GATEWAY_CONFIG: the one service, any authenticated user, the same work as
        # before the route table existed (bench/README.md, "no-file case").
        service = proxy.default
        claims = await authenticate_request(
            headers=headers,
            method=method,
            path=_request_path(scope),
            verify=proxy.access_tokens.verify,
            dpop=app_state.dpop,
            revoked=app_state.revoked,
            token_denied=app_state.epochs.token_denied,
        )
    else:
        service, claims, rule = await _decide(scope, app_state, headers, method, target, ip)
        audience = service.audience
    minter = app_state.minter
    if claims is not None:
        request_state["user_id"] = claims.sub
        if proxy.user_limit is not None:
            await proxy.user_limit.check(claims.sub)

    # 3. Mint, for this service's audience, bound to the method and the exact path the service
    #    will see (its htu check); an anonymous request gets its own scope, never user_request.
    def mint() -> str:
        try:
            if claims is None:
                token: str = minter.mint(
                    sub=proxy.gateway_id,
                    scope=TokenScope.ANONYMOUS,
                    htm=method,
                    htu=target.path,
                    audience=audience,
                    pol=rule,
                )
            else:
                token = minter.mint(
                    sub=claims.sub,
                    scope=TokenScope.USER_REQUEST,
                    htm=method,
                    htu=target.path,
                    roles=claims.roles,
                    sid=claims.sid,
                    audience=audience,
                    pol=rule,
                )
        except ValueError:
            # paths.py refuses every path the minter would; this only keeps a gap a 400.
            raise BadRequest("malformed request path") from None
        return token

    internal_token = mint()

    # 4. Forward. (Chunked trailers never reach ``headers``: the server's protocol drops them,
    #    RFC 9110 §6.5.1.)
    declared = framing(headers, limit=proxy.max_body)
    length, chunked = declared.length, declared.chunked
    body_stream: _BodyStream | None = None
    data: bytes | AsyncIterator[bytes] | None = None
    place = _NO_PLACE
    if length is not None or chunked:
        # A body up to PROXY_BUFFER_BYTES is read whole before a backend connection is taken,
        # so a client that uploads slowly holds none. Only a bigger one streams, and it first
        # takes a place among the uploads that may hold a connection (429/503 when its share
        # is used up): requests without a body never wait behind uploads.
        try:
            if length is not None and length <= proxy.buffer_bytes:
                data = b""
                if length:
                    data, _ = await _read_upto(receive, length, length, proxy.body_timeout)
            else:
                first = b""
                if chunked:
                    first, done = await _read_upto(
                        receive, proxy.buffer_bytes, proxy.max_body, proxy.body_timeout
                    )
                    if done:
                        data = first
                if data is None:
                    # an anonymous upload (a public rule) counts against its address alone
                    owner = claims.sub if claims is not None else f"anonymous:{ip}"
                    place = proxy.uploads.hold(owner, str(ip))
                    body_stream = _BodyStream(receive, proxy.max_body, proxy.body_timeout, first)
                    data = body_stream.chunks()
        except _ClientGone:
            log_event(logger, "proxy_client_gone", method=method, path=target.path)
            return
        if body_stream is None:
            # framed by the pool from the bytes themselves (Content-Length)
            length = None

    outbound = request_headers(
        headers,
        client_ip=ip,
        proto=proto,
        host=_header(headers, b"host") or b"",
        request_id=request_state.get("request_id") or new_request_id(),
        internal_token=internal_token,
    )
    query: bytes = scope.get("query_string", b"")
    request_target = target.raw.encode("latin-1") + (b"?" + query if query else b"")
    span: contextlib.AbstractContextManager[otel.ClientSpan | None] = (
        otel.client_span(method, service.url + request_target.decode("latin-1"))
        if proxy.traced
        else contextlib.nullcontext()
    )

    def retry_headers() -> list[Header]:
        # a resend is a second use: it carries a token of its own (the backend's jti check)
        fresh = mint().encode("ascii")
        return [(name, fresh if name == INTERNAL_AUTH else value) for name, value in outbound]

    backend_started = time.perf_counter()
    with place, span as hop:
        if hop is None:
            for name, value in outbound_headers(request_state.get("trace")):
                outbound.append((name.encode("latin-1"), value.encode("latin-1")))
        else:
            outbound += hop.headers
        exchange = service.pool.stream(
            method, request_target, outbound, body=data, length=length, retry_headers=retry_headers
        )
        try:
            # 5. Stream back. Leaving this block on any path ends the exchange: the connection
            #    goes back to the pool only if its answer was read to the end.
            async with exchange as response:
                if hop is not None:
                    hop.answered(response.status)
                await _relay(
                    response, send, receive, started, backend_started, method, target.path, service
                )
        except Exception as exc:
            # the body iterator's own failures come through the send; its flags say which
            if body_stream is not None and body_stream.too_large:
                raise PayloadTooLarge.over(proxy.max_body) from None
            if body_stream is not None and body_stream.stalled:
                raise BodyTimeout.after(proxy.body_timeout) from None
            if body_stream is not None and body_stream.client_gone:
                log_event(logger, "proxy_client_gone", method=method, path=target.path)
                return
            if isinstance(exc, InvalidRequest):
                # a line break in a header, a body unlike its length: not (all) sent, not reused
                raise BadRequest(str(exc)) from None
            if not isinstance(exc, UpstreamError):
                raise
            raise _backend_error(exc, method, target.path, service) from None


async def _relay(
    response: Response,
    send: Send,
    receive: Receive,
    started: float,
    backend_started: float,
    method: str,
    path: str,
    service: Service,
) -> None:
    """The backend's answer to the client: read whole when small, else streamed."""
    out_headers = response_headers(response.raw_headers)
    status = response.status
    if status in (204, 304):
        # No body, whatever the backend declared: a 304's Content-Length names the size of the
        # representation (RFC 9110 §8.6 allows it), but the server under us would wait for that
        # many body bytes and cut the client's keep-alive connection when none came.
        out_headers = [h for h in out_headers if h[0] != b"content-length"]
    size = response.content_length
    if size is not None and size <= _BUFFER_LIMIT:
        # Small answer (the common case): read it before committing to a status, so a backend
        # failing mid-body still gets the client a clean 502/504.
        payload = await response.read()
        metrics.proxy_timing(started, time.perf_counter() - backend_started)
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": payload})
        return
    backend_seconds = time.perf_counter() - backend_started
    await send({"type": "http.response.start", "status": status, "headers": out_headers})
    # The server under us drops what is sent to a client that went away, without a word: only
    # its http.disconnect says so. Watch for it, or an endless download would keep reading the
    # backend (and keep its pooled connection) for ever.
    watcher = asyncio.ensure_future(_until_disconnect(receive, response))
    try:
        async for chunk in response.iter_chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        # The status line is already out; all that is left is to cut the connection so the
        # client sees a truncated body rather than a complete-looking one.
        if isinstance(exc, _ClientWentAway):
            log_event(logger, "proxy_client_gone", method=method, path=path)
            return
        metrics.backend_failure(exc, service.failures)
        log_event(
            logger,
            "proxy_stream_aborted",
            logging.WARNING,
            service=service.name,
            path=path,
            error=type(exc).__name__,
        )
        return
    finally:
        watcher.cancel()
    await send({"type": "http.response.body", "body": b""})
    metrics.proxy_timing(started, backend_seconds)


class ProxyEndpoint:
    """``proxy_request`` as a raw ASGI app: Starlette wraps plain functions as request/response
    handlers, which would buffer; an object with ``__call__`` is mounted as-is."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await proxy_request(scope, receive, send)


def proxy_route() -> Route:
    """The catch-all route; it goes after the gateway's own routes (they match first)."""
    return Route(PROXY_PATH, ProxyEndpoint())


# -- helpers, in the order the request uses them --------------------------------------------------


def _authenticate(
    scope: Scope, app_state: GatewayState, headers: list[tuple[bytes, bytes]], method: str
) -> Awaitable[AccessClaims]:
    return authenticate_request(
        headers=headers,
        method=method,
        path=_request_path(scope),
        verify=app_state.proxy.access_tokens.verify,
        dpop=app_state.dpop,
        revoked=app_state.revoked,
        token_denied=app_state.epochs.token_denied,
    )


async def _decide(
    scope: Scope,
    app_state: GatewayState,
    headers: list[tuple[bytes, bytes]],
    method: str,
    target: BackendPath,
    ip: str | None,
) -> tuple[Service, AccessClaims | None, str]:
    """With a policy: the service the route names, the caller (``None``: anonymous) and the
    allowing rule's name, or 404 (no route), 401 (a bad token, or none where no public rule
    matches), 403 (no allow rule, or a deny rule) or 429 (the per-IP limit)."""
    proxy = app_state.proxy
    policy = proxy.policy
    assert policy is not None
    # Rules and routes see the path the internal token binds (its htu), minus "/v1": the one
    # canonical, decoded form, never the raw path, the query or a header (path confusion).
    path = target.rule_path
    name = policy.service_for(path)
    if name is None:
        raise NotFound()
    service = proxy.services[name]
    claims: AccessClaims | None = None
    caller: Caller | None = None
    if _header(headers, b"authorization") is not None:
        # A token that fails is a 401 even where a public rule would admit an anonymous
        # request: a broken client must learn it (and a bad token never downgrades silently).
        claims = await _authenticate(scope, app_state, headers, method)
        caller = Caller(claims.sub, frozenset(claims.roles))
    decision = policy.decide(method, path, caller)
    if not decision.allowed or decision.rule is None:
        # No rule names reach the client: which rule (or none) decided stays in the log.
        log_event(
            logger,
            "policy_denied",
            method=method,
            path=target.path,
            service=name,
            rule=decision.rule or "no allow rule",
            user_id=claims.sub if claims is not None else None,
        )
        record(
            Request(scope), "policy_denied", "failure",
            subject=claims.sub if claims is not None else None, service=name,
            rule=decision.rule or "no allow rule", details={"method": method, "path": target.path},
        )  # fmt: skip
        if claims is None:
            raise Unauthorized(headers={"WWW-Authenticate": CHALLENGE})
        raise Forbidden()
    if claims is None and proxy.ip_limit is not None:
        await proxy.ip_limit.check(ip or "unknown")
    return service, claims, decision.rule


def _refuse_gateway_path(scope: Scope) -> None:
    """An auth path reached the catch-all: 405 if an auth route has it with another method."""
    allowed: set[str] = set()
    for route in scope["app"].router.routes:
        if isinstance(route, Route) and route.methods and route.path != PROXY_PATH:
            match, _ = route.matches(scope)
            if match is Match.PARTIAL:
                allowed |= route.methods
    if allowed:
        raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
    raise NotFound()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _request_path(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded), what a DPoP ``htu`` names."""
    raw: bytes | None = scope.get("raw_path")
    return raw.decode("latin-1") if raw else scope["path"]


async def _receive_within(receive: Receive, pause: float) -> Message:
    """The client's next message, within ``pause`` seconds (BODY_READ_TIMEOUT)."""
    try:
        async with asyncio.timeout(pause):
            return await receive()
    except TimeoutError:
        raise _Stalled() from None


async def _read_upto(receive: Receive, size: int, limit: int, pause: float) -> tuple[bytes, bool]:
    """A body's first ``size`` bytes (or a little more: whole messages) and whether that was
    all of it; more than ``limit`` bytes in all is 413."""
    parts: list[bytes] = []
    seen = 0
    more = True
    while more and seen <= size:
        try:
            message = await _receive_within(receive, pause)
        except _Stalled:
            raise BodyTimeout.after(pause) from None
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge.over(limit)
        parts.append(chunk)
    return b"".join(parts), not more


async def _until_disconnect(receive: Receive, response: Response) -> None:
    # the request body was read to its end before the answer came: all that is left to
    # receive is the disconnect (or nothing, until the handler cancels this)
    ended = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            response.abort(_ClientWentAway("the client went away"))
            return
        if not message.get("more_body", False):
            if ended:
                # a server that repeats the end of the body instead of waiting (ASGI says it
                # waits) has no disconnect to tell: nothing to watch
                return
            ended = True


class _BodyStream:
    """The client's body as an async iterator for the pool, stopped at ``limit`` bytes and at
    a pause longer than ``pause`` seconds; ``first`` is what was read before it started.

    Counting here (not trusting Content-Length) covers chunked uploads that declare no size.
    """

    def __init__(self, receive: Receive, limit: int, pause: float, first: bytes) -> None:
        self._receive = receive
        self._limit = limit
        self._pause = pause
        self._first = first
        self.too_large = False
        self.client_gone = False
        self.stalled = False

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = len(self._first)
        if self._first:
            yield self._first
        more = True
        while more:
            try:
                message = await _receive_within(self._receive, self._pause)
            except _Stalled:
                self.stalled = True
                raise
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise _ClientGone()
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            seen += len(chunk)
            if seen > self._limit:
                self.too_large = True
                raise PayloadTooLarge.over(self._limit)
            if chunk:
                yield chunk


def _backend_error(exc: BaseException, method: str, path: str, service: Service) -> GatewayError:
    """503 when no pooled connection came free in time (the gateway is busy), 504 for a service
    that did not answer in time, 502 for one that could not be reached or broke the
    connection."""
    metrics.backend_failure(exc, service.failures)
    if isinstance(exc, PoolTimeout):
        log_event(logger, "backend_pool_busy", logging.WARNING, service=service.name, method=method)
        return GatewayBusy()
    timeout = isinstance(exc, TimeoutError)
    log_event(
        logger,
        "backend_timeout" if timeout else "backend_unreachable",
        logging.WARNING,
        service=service.name,
        method=method,
        path=path,
        error=type(exc).__name__,
    )
    if timeout:
        return GatewayTimeout()
    return BadGateway("the backend is unreachable")
