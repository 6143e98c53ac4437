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

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable

from internal_auth import TokenScope
from servicekit import otel
from servicekit.bodies import PayloadTooLarge, framing
from servicekit.forwarded import client_and_scheme
from servicekit.logs import log_event, new_request_id
from servicekit.tracing import outbound_headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from gateway import metrics
from gateway.audit.record import record
from gateway.auth.bearer import CHALLENGE, authenticate_request
from gateway.auth.tokens import AccessClaims
from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    NotFound,
    Unauthorized,
)
from gateway.policy import Caller
from gateway.proxy.backend import Service
from gateway.proxy.headers import INTERNAL_AUTH, Header, request_headers, response_headers
from gateway.proxy.paths import BackendPath, backend_path
from gateway.proxy.upstream import InvalidRequest, UpstreamError
from gateway.state import GatewayState, scope_state

logger = logging.getLogger("gateway.proxy")

# Bodies up to this size are read whole and sent in one write; larger ones (or ones of unknown
# size) stream through in the chunks they arrive in, so memory stays flat for big transfers.
_BUFFER_LIMIT = 64 * 1024
# The catch-all route of every path the gateway does not answer itself.
PROXY_PATH = "/api/v1/{path:path}"
# The gateway's own routes: never proxied, whatever the method.
GATEWAY_PREFIX = "/api/v1/auth/"


class _ClientGone(Exception):
    """The client disconnected while we were reading its body."""


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

    # 4. Forward.
    declared = framing(headers, limit=proxy.max_body)
    length, chunked = declared.length, declared.chunked
    body_stream: _BodyStream | None = None
    data: bytes | AsyncIterator[bytes] | None = None
    if length is not None and length <= _BUFFER_LIMIT:
        try:
            data = await _read_small(receive, length) if length else b""
        except _ClientGone:
            log_event(logger, "proxy_client_gone", method=method, path=target.path)
            return
    elif length is not None or chunked:
        body_stream = _BodyStream(receive, proxy.max_body)
        data = body_stream.chunks()

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
    try:
        with span as hop:
            if hop is None:
                for name, value in outbound_headers(request_state.get("trace")):
                    outbound.append((name.encode("latin-1"), value.encode("latin-1")))
            else:
                outbound += hop.headers
            response = await service.pool.request(
                method,
                request_target,
                outbound,
                body=data,
                length=length,
                retry_headers=retry_headers,
            )
            if hop is not None:
                hop.answered(response.status)
    except Exception as exc:
        # the body iterator's own failures come through the send; its flags say which it was
        if body_stream is not None and body_stream.too_large:
            raise PayloadTooLarge.over(proxy.max_body) from None
        if body_stream is not None and body_stream.client_gone:
            log_event(logger, "proxy_client_gone", method=method, path=target.path)
            return
        if isinstance(exc, InvalidRequest):
            # a line break in a header, a body unlike its length: not (all) sent, not reused
            raise BadRequest(str(exc)) from None
        if not isinstance(exc, UpstreamError):
            raise
        raise _backend_error(exc, method, target.path, service) from None

    # 5. Stream back.
    try:
        out_headers = response_headers(response.raw_headers)
        size = response.content_length
        if size is not None and size <= _BUFFER_LIMIT:
            # Small answer (the common case): read it before committing to a status, so a
            # backend failing mid-body still gets the client a clean 502/504.
            try:
                payload = await response.read()
            except UpstreamError as exc:
                raise _backend_error(exc, method, target.path, service) from None
            metrics.proxy_timing(started, time.perf_counter() - backend_started)
            await send(
                {"type": "http.response.start", "status": response.status, "headers": out_headers}
            )
            await send({"type": "http.response.body", "body": payload})
            return
        backend_seconds = time.perf_counter() - backend_started
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )
        try:
            async for chunk in response.iter_chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # The status line is already out; all that is left is to cut the connection so the
            # client sees a truncated body rather than a complete-looking one.
            metrics.backend_failure(exc, service.failures)
            log_event(
                logger,
                "proxy_stream_aborted",
                logging.WARNING,
                service=service.name,
                path=target.path,
                error=type(exc).__name__,
            )
            return
        await send({"type": "http.response.body", "body": b""})
        metrics.proxy_timing(started, backend_seconds)
    finally:
        response.release()


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


async def _read_small(receive: Receive, length: int) -> bytes:
    parts: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(parts)


class _BodyStream:
    """The client's body as an async iterator for aiohttp, stopped at ``limit`` bytes.

    Counting here (not trusting Content-Length) covers chunked uploads that declare no size.
    """

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.too_large = False
        self.client_gone = False

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        more = True
        while more:
            message = await self._receive()
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
    """504 for a service that did not answer in time, 502 for one that could not be reached or
    broke the connection."""
    timeout = isinstance(exc, TimeoutError)
    metrics.backend_failure(exc, service.failures)
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
