"""W3C Trace Context (``traceparent``/``tracestate``): who may choose the trace, and passing it on.

A trace id decides which requests an operator's tracing backend groups together, and the
``sampled`` flag decides what it records; a client on the internet must choose neither (it could
flood the tracing backend by forcing sampling, or splice its requests into someone else's trace).
So the gateway takes an incoming ``traceparent`` only from a peer in ``TRUSTED_PROXIES`` (a load
balancer or a mesh sidecar that is itself part of the trace); from anyone else it starts a new
trace and keeps the client's well-formed value only as ``client_traceparent`` (a log field and a
span attribute, never a parent). The backend is private and reached only through the gateway, so
it trusts what it receives.

``tracestate`` is vendor data carried along with a trusted ``traceparent``; it is kept only when
it is at most :data:`MAX_TRACESTATE` bytes of printable ASCII (the specification asks carriers to
pass at least 512 characters; anything longer here is dropped, not cut, since a cut member is
garbage to its vendor).

The trace id of the request being served is in :data:`servicekit.logs.trace_id_var`, so every log
line of both services carries it next to the request id; :func:`outbound_headers` gives the
headers for a call made while serving it (a new span id per hop). When OpenTelemetry is on
(``servicekit.otel``), its instrumentation creates the spans and propagates the context itself;
this module still decides whether the incoming headers may be believed, by removing them before
the instrumentation reads them.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit.logs import trace_id_var

__all__ = [
    "MAX_TRACESTATE",
    "TraceContext",
    "TraceContextMiddleware",
    "begin",
    "current_trace",
    "incoming",
    "outbound_headers",
    "parse_traceparent",
]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
MAX_TRACESTATE = 512
# version 00 exactly (W3C Trace Context §3.2): lower-case hex, fixed lengths
_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACESTATE = re.compile(rb"[\x20-\x7e]*")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# Trace and span ids are labels, not secrets (the W3C specification asks for randomness, not for
# unpredictability), so they come from the module's PRNG, seeded from the OS and re-seeded in
# every forked worker, as OpenTelemetry's own RandomIdGenerator does: a getrandom() system call
# per id cost more than the rest of the trace bookkeeping on the proxied path.
_ids = random.Random()  # noqa: S311 (ids, not secrets: see above)
# a forked worker must not replay its parent's sequence (spawned ones seed themselves)
os.register_at_fork(after_in_child=_ids.seed)


def _trace_id() -> str:
    # all zeros is invalid (W3C Trace Context §3.2.2.3): the odds are 2**-128, the cost one test
    return "%032x" % (_ids.getrandbits(128) or 1)


def _span_id() -> str:
    return "%016x" % (_ids.getrandbits(64) or 1)


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    #: the caller's span (``None`` for a trace started here)
    parent_id: str | None
    flags: str
    tracestate: str | None = None
    #: an untrusted client's own ``traceparent`` (well-formed), recorded, never followed
    client_traceparent: str | None = None

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


current_trace: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "tokengate_trace", default=None
)


def parse_traceparent(value: bytes) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a well-formed version-00 value, else ``None``."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, parent_id, flags = (group.decode("ascii") for group in match.groups())
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def new_trace() -> TraceContext:
    # not sampled: a trace started here is recorded only when OpenTelemetry's sampler says so
    return TraceContext(trace_id=_trace_id(), parent_id=None, flags="00")


def incoming(headers: list[tuple[bytes, bytes]], *, trusted: bool) -> TraceContext:
    """The trace this request belongs to, from its headers if ``trusted``, else a new one."""
    parent: bytes | None = None
    state: bytes | None = None
    for name, value in headers:
        if name == TRACEPARENT:
            if parent is not None:
                # two values: intermediaries may pick different ones, so believe neither
                return new_trace()
            parent = value
        elif name == TRACESTATE:
            state = value if state is None else state + b"," + value
    if parent is None:
        return new_trace()
    parsed = parse_traceparent(parent)
    if parsed is None:
        return new_trace()
    if not trusted:
        fresh = new_trace()
        return TraceContext(
            fresh.trace_id, None, fresh.flags, client_traceparent=parent.decode("ascii").strip()
        )
    tracestate = None
    if state is not None and len(state) <= MAX_TRACESTATE and _TRACESTATE.fullmatch(state):
        tracestate = state.decode("ascii").strip() or None
    return TraceContext(parsed[0], parsed[1], parsed[2], tracestate)


def outbound_headers(context: TraceContext | None = None) -> list[tuple[str, str]]:
    """``traceparent`` (a new span id for this hop) and ``tracestate`` for a call made now."""
    context = context or current_trace.get()
    if context is None:
        return []
    headers = [("traceparent", f"00-{context.trace_id}-{_span_id()}-{context.flags}")]
    if context.tracestate:
        headers.append(("tracestate", context.tracestate))
    return headers


class TraceContextMiddleware:
    """Decide the request's trace (see the module docstring) and expose it to logs and calls.

    ``trusted(peer)`` says whether the TCP peer may choose the trace. An untrusted request's
    trace headers are removed from the scope, so nothing further in (OpenTelemetry's
    instrumentation included) can adopt them.
    """

    def __init__(self, app: ASGIApp, *, trusted: Callable[[str | None], bool]) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        end = begin(scope, trusted=self.trusted(client[0] if client else None))
        try:
            await self.app(scope, receive, send)
        finally:
            end()


def begin(scope: Scope, *, trusted: bool) -> Callable[[], None]:
    """Decide the trace of the HTTP request in ``scope`` and make it current; call what this
    returns when the request is done. :class:`TraceContextMiddleware` is this as a layer; the
    gateway's edge layer calls it directly (one layer on its hot path)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    context = incoming(headers, trusted=trusted)
    # Whatever was not believed (an untrusted peer's values, a malformed or doubled value,
    # an oversized tracestate) leaves the scope, so nothing further in can adopt it.
    drop = {TRACESTATE} if context.tracestate is None else set()
    if context.parent_id is None:
        drop.add(TRACEPARENT)
    if any(name in drop for name, _ in headers):
        scope["headers"] = [(n, v) for n, v in headers if n not in drop]
    scope.setdefault("state", {})["trace"] = context
    trace_token = current_trace.set(context)
    id_token = trace_id_var.set(context.trace_id)

    def end() -> None:
        trace_id_var.reset(id_token)
        current_trace.reset(trace_token)

    return end
