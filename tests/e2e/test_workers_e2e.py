"""Several workers: ``tokengate gateway --workers 2`` and ``tokengate backend --workers 2``.

Both gateway workers serve requests; one scrape shows the sum of both; a logout handled by one
worker kills the access token on every worker within a second; a worker killed outright is
replaced, its counters stay in the totals and its live gauges leave the scrape.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.scrape import scrape, value
from tests.support.stack import Stack, free_port, running_stack

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:5173"
PASSWORD = "workers correct horse battery staple"


class Workers:
    def __init__(self, stack: Stack, metrics_url: str, backend_metrics: str, folder: Path):
        self.stack = stack
        self.metrics_url = metrics_url
        self.backend_metrics = backend_metrics
        self.folder = folder


@pytest.fixture(scope="module")
def workers(
    migrated_dsn: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    folder = tmp_path_factory.mktemp("multiproc")
    # a file of an earlier run: it must not be added to this run's totals
    (folder / "counter_999999.db").write_bytes(b"\0" * 8)
    gport, bport = free_port(), free_port()
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env={
            "METRICS_PORT": str(gport),
            "PROMETHEUS_MULTIPROC_DIR": str(folder),
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
        },
        # cheap hashes: this test is about workers, not password cost
        backend_env={"METRICS_PORT": str(bport), "ARGON2_MEMORY_KIB": "8192"},
        gateway_args=("--workers", "2"),
        backend_args=("--workers", "2"),
    ) as stack:
        yield Workers(
            stack,
            f"http://127.0.0.1:{gport}/metrics",
            f"http://127.0.0.1:{bport}/metrics",
            folder,
        )


def _access_lines(stack: Stack) -> list[dict[str, object]]:
    out = []
    for line in stack.log_text("gateway").splitlines():
        if '"event":"request"' in line:
            out.append(json.loads(line))
    return out


def _started_pids(stack: Stack) -> set[int]:
    return {
        int(json.loads(line)["pid"])
        for line in stack.log_text("gateway").splitlines()
        if '"event":"gateway_started"' in line
    }


def _pids_for(stack: Stack, prefix: str, status: int) -> dict[int, int]:
    """pid -> how many requests whose id starts with ``prefix`` it answered with ``status``."""
    seen: dict[int, int] = {}
    for line in _access_lines(stack):
        if str(line.get("request_id", "")).startswith(prefix) and line["status"] == status:
            pid = int(str(line["pid"]))
            seen[pid] = seen.get(pid, 0) + 1
    return seen


# no keep-alive: every request opens its own connection, which either worker may accept
_FRESH = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def _spread(stack: Stack, token: str, prefix: str, expect: int, at_least: int = 30) -> int:
    """Requests on fresh connections until both workers answered (and ``at_least`` were sent);
    every answer must be ``expect``. Returns how many were sent."""
    sent = 0
    while sent < 400:
        response = _FRESH.get(
            stack.gateway_url + "/api/v1/me",
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": f"{prefix}{sent}"},
            timeout=10,
        )
        assert response.status_code == expect, response.text
        sent += 1
        if sent >= at_least and sent % 10 == 0 and len(_pids_for(stack, prefix, expect)) >= 2:
            return sent
    pytest.fail(f"one worker answered every request: {_pids_for(stack, prefix, expect)}")


def _login(stack: Stack, email: str) -> httpx.Response:
    response = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"Origin": ORIGIN},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def test_two_workers_serve_and_one_scrape_shows_the_sum(workers: Workers) -> None:
    stack = workers.stack
    assert not (workers.folder / "counter_999999.db").exists()
    email = f"workers-{uuid.uuid4().hex[:8]}@example.test"
    stack.create_user(email, PASSWORD)
    token = _login(stack, email).json()["access_token"]
    g0, b0 = scrape(workers.metrics_url), scrape(workers.backend_metrics)

    sent = _spread(stack, token, f"sum-{uuid.uuid4().hex[:6]}-", 200)

    g1, b1 = scrape(workers.metrics_url), scrape(workers.backend_metrics)
    me = {"route": "/api/v1/me", "method": "GET"}
    got = value(g1, "tokengate_gateway_requests_total", **me, status_class="2xx") - value(
        g0, "tokengate_gateway_requests_total", **me, status_class="2xx"
    )
    assert got == sent
    backend_me = {"route": "/v1/me", "method": "GET", "status": "200"}
    assert (
        value(b1, "tokengate_backend_requests_total", **backend_me)
        - value(b0, "tokengate_backend_requests_total", **backend_me)
        == sent
    )
    # one sample per series, not one per worker: the parent serves the sum
    assert value(g1, "tokengate_gateway_revocation_listener_connected") == 1
    # the workers' files hold only their own service's families (one registry per service)
    assert not {n for n, _ in b1 if n.startswith("tokengate_gateway_")}
    assert not {n for n, _ in g1 if n.startswith("tokengate_backend_")}
    assert any(n == "tokengate_gateway_build_info" for n, _ in g1)


def test_logout_on_one_worker_kills_the_token_on_every_worker_within_a_second(
    workers: Workers,
) -> None:
    stack = workers.stack
    email = f"workers-{uuid.uuid4().hex[:8]}@example.test"
    stack.create_user(email, PASSWORD)
    login = _login(stack, email)
    token = login.json()["access_token"]
    _spread(stack, token, f"alive-{uuid.uuid4().hex[:6]}-", 200, at_least=10)

    cookie = login.cookies.get("tg_refresh")
    out = httpx.post(
        stack.gateway_url + "/api/v1/auth/logout",
        headers={"Origin": ORIGIN, "Cookie": f"tg_refresh={cookie}", "X-Request-Id": "logout-1"},
        timeout=10,
    )
    done = time.monotonic()
    assert out.status_code == 204
    time.sleep(max(0.0, 1.0 - (time.monotonic() - done)))
    # a second after the logout, whichever worker answers refuses the token
    prefix = f"dead-{uuid.uuid4().hex[:6]}-"
    _spread(stack, token, prefix, 401)
    assert len(_pids_for(stack, prefix, 401)) == 2


def test_a_killed_worker_is_replaced_and_the_totals_stay(workers: Workers) -> None:
    stack = workers.stack
    email = f"workers-{uuid.uuid4().hex[:8]}@example.test"
    stack.create_user(email, PASSWORD)
    token = _login(stack, email).json()["access_token"]
    prefix = f"kill-{uuid.uuid4().hex[:6]}-"
    _spread(stack, token, prefix, 200, at_least=10)
    victim = min(_pids_for(stack, prefix, 200))
    started = _started_pids(stack)
    before = scrape(workers.metrics_url)
    total = "tokengate_gateway_requests_total"
    labels = {"route": "/api/v1/me", "method": "GET", "status_class": "2xx"}
    assert any(p.name.endswith(f"_{victim}.db") for p in workers.folder.iterdir())

    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = scrape(workers.metrics_url)
        gauges = [p.name for p in workers.folder.iterdir() if p.name.startswith("gauge_live")]
        if not any(name.endswith(f"_{victim}.db") for name in gauges):
            break
        time.sleep(0.2)
    # the dead worker's live gauges are gone, its counters are still counted
    assert not any(name.endswith(f"_{victim}.db") for name in gauges)
    assert value(after, total, **labels) >= value(before, total, **labels)
    # uvicorn starts a replacement; once it is up, both workers answer again
    deadline = time.monotonic() + 30
    while _started_pids(stack) <= started and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _started_pids(stack) - started
    _spread(stack, token, f"again-{uuid.uuid4().hex[:6]}-", 200, at_least=10)
