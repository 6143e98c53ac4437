"""OpenTelemetry (the ``otel`` extra) end to end: real gateway and backend processes export spans
over OTLP/HTTP to a small receiver in this test; one proxied request is one trace across both
processes (gateway server span -> backend hop -> backend server span -> PostgreSQL), and the
gateway's log line names the same trace."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.stack import Stack, free_port, running_stack

pytest.importorskip("opentelemetry.sdk", reason="needs the 'otel' extra")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

pytestmark = pytest.mark.e2e

PASSWORD = "otel correct horse battery staple"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SERVER, CLIENT = 2, 3  # Span.SpanKind values


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, str]


class Receiver:
    """The smallest OTLP/HTTP trace receiver: every exported span, in memory."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                service=service,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                attributes={
                                    a.key: a.value.string_value or str(a.value.int_value)
                                    for a in span.attributes
                                },
                            )
                        )

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def traced(
    migrated_dsn: str, redis_url: str, redis_prefix: str
) -> Iterator[tuple[Stack, Receiver]]:
    receiver = Receiver()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with running_stack(
            database_url=migrated_dsn,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            gateway_env=otel,
            backend_env={**otel, "ARGON2_MEMORY_KIB": "8192"},
        ) as stack:
            yield stack, receiver
    finally:
        receiver.server.shutdown()


def test_one_proxied_request_is_one_trace_across_both_processes(
    traced: tuple[Stack, Receiver],
) -> None:
    stack, receiver = traced
    email = f"otel-{uuid.uuid4().hex[:8]}@example.test"
    stack.create_user(email, PASSWORD)
    login = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        timeout=30,
    )
    assert login.status_code == 200, login.text
    rid = f"otel-{uuid.uuid4().hex[:12]}"
    me = httpx.get(
        stack.gateway_url + "/api/v1/me",
        headers={
            "Authorization": f"Bearer {login.json()['access_token']}",
            "X-Request-Id": rid,
            # from an untrusted peer: recorded, never followed
            "traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01",
        },
        timeout=10,
    )
    assert me.status_code == 200

    # the access line is written just after the answer went out
    deadline = time.monotonic() + 5
    lines: list[dict[str, object]] = []
    while not lines and time.monotonic() < deadline:
        lines = [
            json.loads(text)
            for text in stack.log_text("gateway").splitlines()
            if rid in text and '"event":"request"' in text
        ]
        time.sleep(0.05)
    line = lines[0]
    trace_id = str(line["trace_id"])
    assert trace_id != CLIENT_TRACE

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        # both processes export on their own schedule: wait for the last span of each
        database = any(
            s.service == "tokengate-backend" and s.attributes.get("db.system") for s in spans
        )
        served = any(s.service == "tokengate-gateway" and s.kind == SERVER for s in spans)
        if database and served:
            break
        time.sleep(0.1)
    by_id = {s.span_id: s for s in spans}
    services = {s.service for s in spans}
    assert services == {"tokengate-gateway", "tokengate-backend"}, spans

    gateway_server = next(
        s
        for s in spans
        if s.service == "tokengate-gateway" and s.kind == SERVER and not s.parent_id
    )
    assert gateway_server.attributes.get("tokengate.client_traceparent", "").startswith(
        f"00-{CLIENT_TRACE}-"
    )
    hop = next(s for s in spans if s.service == "tokengate-gateway" and s.kind == CLIENT)
    backend_server = next(s for s in spans if s.service == "tokengate-backend" and s.kind == SERVER)
    # the backend's request is a child of the gateway's hop, which belongs to the gateway request
    assert backend_server.parent_id == hop.span_id
    parent = by_id.get(hop.parent_id)
    while parent is not None and parent.span_id != gateway_server.span_id:
        parent = by_id.get(parent.parent_id)
    assert parent is gateway_server
    queries = [
        s for s in spans if s.service == "tokengate-backend" and s.attributes.get("db.system")
    ]
    assert queries and all(s.attributes["db.system"] == "postgresql" for s in queries)
