"""W3C trace context through the gateway's proxy: a client on the internet cannot choose the
trace or force sampling; a trusted proxy can; the backend always gets the gateway's context."""

from __future__ import annotations

import os

import pytest
from internal_auth import PrivateKey
from servicekit import tracing

from tests.gateway.conftest import ORIGIN
from tests.gateway.test_proxy_live import stack

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"


def _trace(headers: list[list[str]]) -> tuple[list[str], list[str]]:
    parents = [v for k, v in headers if k == "traceparent"]
    states = [v for k, v in headers if k == "tracestate"]
    return parents, states


async def test_a_public_client_cannot_choose_the_trace_or_force_sampling(
    env: dict[str, str], internal_key: PrivateKey
) -> None:
    async with stack(env, internal_key) as s:
        r = await s.client.get(
            "/api/v1/echo",
            headers={**s.auth(), "traceparent": TRACEPARENT, "tracestate": "vendor=evil"},
        )
    assert r.status_code == 200, r.text
    parents, states = _trace(r.json()["headers"])
    assert len(parents) == 1 and states == []
    version, trace_id, parent_id, flags = parents[0].split("-")
    assert version == "00" and len(trace_id) == 32 and len(parent_id) == 16
    assert trace_id != CLIENT_TRACE and parent_id != CLIENT_PARENT
    assert flags == "00"  # the client's sampled flag is not followed


async def test_a_trusted_proxy_continues_its_trace(
    env: dict[str, str], internal_key: PrivateKey
) -> None:
    async with stack(env, internal_key, TRUSTED_PROXIES="127.0.0.1/32") as s:
        r = await s.client.get(
            "/api/v1/echo",
            headers={**s.auth(), "traceparent": TRACEPARENT, "tracestate": "rojo=00f067aa0ba902b7"},
        )
        oversized = await s.client.get(
            "/api/v1/echo",
            headers={**s.auth(), "traceparent": TRACEPARENT, "tracestate": "a=" + "x" * 600},
        )
        malformed = await s.client.get(
            "/api/v1/echo",
            headers={**s.auth(), "traceparent": f"00-{'0' * 32}-{CLIENT_PARENT}-01"},
        )
    parents, states = _trace(r.json()["headers"])
    _, trace_id, parent_id, flags = parents[0].split("-")
    assert (trace_id, flags) == (CLIENT_TRACE, "01")
    assert parent_id != CLIENT_PARENT  # the gateway's hop is a new span
    assert states == ["rojo=00f067aa0ba902b7"]
    # a tracestate over the bound is dropped whole, the trace itself still continues
    parents, states = _trace(oversized.json()["headers"])
    assert parents[0].split("-")[1] == CLIENT_TRACE and states == []
    # an all-zero trace id is invalid: a new trace
    parents, _ = _trace(malformed.json()["headers"])
    assert parents[0].split("-")[1] != "0" * 32


async def test_cors_allows_the_trace_headers(env: dict[str, str], internal_key: PrivateKey) -> None:
    async with stack(env, internal_key) as s:
        r = await s.client.options(
            "/api/v1/echo",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "traceparent, tracestate, authorization",
            },
        )
    assert r.status_code == 200, r.text
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "traceparent" in allowed and "tracestate" in allowed


@pytest.mark.parametrize(
    "value",
    [
        TRACEPARENT.upper(),  # upper-case hex is invalid
        f"01-{CLIENT_TRACE}-{CLIENT_PARENT}-01",  # unknown version: not followed
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",
        f"00-{CLIENT_TRACE}-{CLIENT_PARENT}",
        "garbage",
    ],
)
def test_malformed_traceparents_are_not_followed(value: str) -> None:
    from servicekit.tracing import incoming, parse_traceparent

    assert parse_traceparent(value.encode()) is None
    assert incoming([(b"traceparent", value.encode())], trusted=True).parent_id is None


def test_two_traceparents_are_not_followed() -> None:
    from servicekit.tracing import incoming

    headers = [(b"traceparent", TRACEPARENT.encode())] * 2
    assert incoming(headers, trusted=True).trace_id != CLIENT_TRACE


def test_new_ids_are_well_formed_distinct_and_differ_in_a_forked_worker() -> None:
    ids = {tracing.new_trace().trace_id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(tracing._TRACEPARENT.fullmatch(f"00-{i}-{'1' * 16}-00".encode()) for i in ids)
    span = tracing.outbound_headers(tracing.new_trace())[0][1].split("-")[2]
    assert len(span) == 16 and span != "0" * 16
    # a worker forked from a parent that already made ids must not repeat the parent's next ones
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child's coverage is not collected)
        os.write(write, tracing.new_trace().trace_id.encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != tracing.new_trace().trace_id
