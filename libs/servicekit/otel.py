"""OpenTelemetry spans, on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Spans come from the maintained instrumentation packages where one covers the code: the ASGI
server span of every request (``opentelemetry-instrumentation-asgi``), the gateway's calls through
httpx (``-httpx``: login's credential check, the lifecycle checks) and every PostgreSQL statement
(``-asyncpg``). The proxied hop goes through the gateway's own connection pool, which no package
instruments: :func:`client_span` gives it the CLIENT span and the ``traceparent`` it sends.
They are exported over OTLP/HTTP to the endpoint; every other ``OTEL_*`` variable (sampler,
headers, batch delays, resource attributes) works as the SDK documents it.

Whether an incoming ``traceparent`` is believed is still decided by
:class:`servicekit.tracing.TraceContextMiddleware`, which sits outside the instrumentation and
removes the headers it does not trust; a trace it starts keeps the id that module chose (the span
of a new trace is given that id), so log lines and spans name the same trace.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit.config import ConfigError
from servicekit.tracing import current_trace

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"

_configured: str | None = None


def endpoint_from_env(environ: Mapping[str, str]) -> str | None:
    value = (environ.get(ENDPOINT) or "").strip()
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{ENDPOINT} must be an http(s) URL (OTLP over HTTP), got {value!r}")
    # said here, with every other setting, not by each worker as it builds its app (a traceback)
    if not all(_installed(module) for module in _NEEDED):
        raise ConfigError(
            f"{ENDPOINT} is set but OpenTelemetry is not installed (pip install 'tokengate[otel]')"
        )
    return value.rstrip("/")


_NEEDED = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.instrumentation.asgi",
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def setup(service_name: str, endpoint: str | None) -> list[Middleware]:
    """Turn spans on for this process (once) and return the ASGI layers to add; ``[]`` when off.

    Raises :class:`ConfigError` when the endpoint is set but the extra is not installed: an
    operator who asked for traces must not silently get none.
    """
    global _configured
    if endpoint is None:
        return []
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    except ImportError:
        raise ConfigError(
            f"{ENDPOINT} is set but OpenTelemetry is not installed (pip install 'tokengate[otel]')"
        ) from None

    class RequestTraceIds(RandomIdGenerator):
        """A trace started while serving a request gets the id servicekit.tracing chose for it,
        so log lines and spans name the same trace whichever layer writes them."""

        def generate_trace_id(self) -> int:
            context = current_trace.get()
            return int(context.trace_id, 16) if context else super().generate_trace_id()

    if _configured is None:
        # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES still override the name (SDK rules)
        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            id_generator=RequestTraceIds(),
        )
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        HTTPXClientInstrumentor().instrument()
        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
        _configured = service_name
    return [Middleware(OpenTelemetryMiddleware), Middleware(_ClientTraceAttribute)]


class ClientSpan:
    """The span of one outbound call: the headers that carry it, and a place for the status."""

    def __init__(self, span: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self._span = span
        self.headers = headers

    def answered(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR))


@contextlib.contextmanager
def client_span(method: str, url: str) -> Iterator[ClientSpan]:
    """A CLIENT span around a call made now, child of the current span; only when tracing is on.

    The span's context goes out in the ``traceparent``/``tracestate`` of :attr:`ClientSpan.headers`
    (the W3C propagator), so the callee's server span is its child. An exception leaving the
    block is recorded on the span and marks it as an error.
    """
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("tokengate")
    with tracer.start_as_current_span(
        method,
        kind=trace.SpanKind.CLIENT,
        attributes={"http.request.method": method, "url.full": url},
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield ClientSpan(
            span, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]
        )


def wrap(app: ASGIApp, layers: list[Middleware]) -> ASGIApp:
    """``app`` inside ``layers`` (the first outermost), for code that builds its own stack."""
    for layer in reversed(layers):
        factory: Any = layer.cls
        app = factory(app, *layer.args, **layer.kwargs)
    return app


def shutdown() -> None:
    """Flush the spans still buffered (a worker stopping)."""
    if _configured is None:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


class _ClientTraceAttribute:
    """Inside the server span: an untrusted client's own ``traceparent`` becomes an attribute,
    recorded for whoever debugs that client, never followed (servicekit.tracing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        untrusted = getattr((scope.get("state") or {}).get("trace"), "client_traceparent", None)
        if untrusted and scope["type"] == "http":
            from opentelemetry import trace

            trace.get_current_span().set_attribute("tokengate.client_traceparent", untrusted)
        await self.app(scope, receive, send)
