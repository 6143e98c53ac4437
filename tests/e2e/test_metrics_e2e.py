"""Metrics end to end: real gateway and backend processes, each with its metrics listener; real
traffic (logins, a rate-limit hit, proxied requests, a refresh, a reuse detection, a logout, a
refused internal token); both endpoints scraped before and after, exact deltas checked."""

from __future__ import annotations

import json
import platform
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servicekit.metrics import version

from gateway.metrics import PROXIED_ROUTES
from tests.support.scrape import delta, names, scrape, value
from tests.support.stack import Stack, free_port, running_stack

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:5173"
PASSWORD = "metrics correct horse battery staple"


class Scraped:
    def __init__(self, stack: Stack, gateway_metrics: str, backend_metrics: str) -> None:
        self.stack = stack
        self.gateway_metrics = gateway_metrics
        self.backend_metrics = backend_metrics


@pytest.fixture(scope="module")
def scraped(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Scraped]:
    gport, bport = free_port(), free_port()
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env={
            "METRICS_PORT": str(gport),
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "3/minute",
            "REFRESH_GRACE_SECONDS": "0",
            # requests from 127.0.0.2 come from a trusted proxy (the trace-context test)
            "TRUSTED_PROXIES": "127.0.0.2/32",
        },
        backend_env={"METRICS_PORT": str(bport)},
    ) as stack:
        yield Scraped(
            stack, f"http://127.0.0.1:{gport}/metrics", f"http://127.0.0.1:{bport}/metrics"
        )


def _login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def _refresh_cookie(response: httpx.Response) -> str:
    cookie = response.cookies.get("tg_refresh")
    assert cookie, response.headers
    return cookie


def test_scrapes_count_real_traffic_exactly(scraped: Scraped) -> None:
    stack = scraped.stack
    alice, bob = (f"metrics-{n}-{uuid.uuid4().hex[:8]}@example.test" for n in ("a", "b"))
    stack.create_user(alice, PASSWORD)
    stack.create_user(bob, PASSWORD)
    g0, b0 = scrape(scraped.gateway_metrics), scrape(scraped.backend_metrics)

    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        ok = _login(client, alice)
        assert ok.status_code == 200, ok.text
        client.cookies.clear()
        assert _login(client, alice, "wrong password 1").status_code == 401
        assert _login(client, alice, "wrong password 2").status_code == 401
        assert _login(client, alice, "wrong password 3").status_code == 401
        limited = _login(client, alice, "wrong password 4")
        assert limited.status_code == 429  # the 4th failure for one account within a minute
        auth = {"Authorization": f"Bearer {ok.json()['access_token']}"}

        assert client.get("/api/v1/me", headers=auth).status_code == 200
        note = client.post("/api/v1/notes", headers=auth, json={"title": "t", "body": "b"})
        assert note.status_code == 201, note.text
        note_id = note.json()["id"]
        for _ in range(2):
            assert client.get(f"/api/v1/notes/{note_id}", headers=auth).status_code == 200
        assert client.get(f"/api/v1/nothing-here/{note_id}", headers=auth).status_code == 404

        first = _refresh_cookie(ok)
        rotated = client.post(
            "/api/v1/auth/refresh",
            headers={"Origin": ORIGIN, "Cookie": f"tg_refresh={first}"},
        )
        assert rotated.status_code == 200, rotated.text
        client.cookies.clear()
        replay = client.post(
            "/api/v1/auth/refresh",
            headers={"Origin": ORIGIN, "Cookie": f"tg_refresh={first}"},
        )
        assert replay.status_code == 401  # a used token after the grace window: reuse

        bob_login = _login(client, bob)
        assert bob_login.status_code == 200
        client.cookies.clear()
        out = client.post(
            "/api/v1/auth/logout",
            headers={"Origin": ORIGIN, "Cookie": f"tg_refresh={_refresh_cookie(bob_login)}"},
        )
        assert out.status_code == 204

    # the backend called directly, without an internal token
    assert httpx.get(stack.backend_url + "/v1/me", timeout=5).status_code == 401

    g1, b1 = scrape(scraped.gateway_metrics), scrape(scraped.backend_metrics)

    def gd(name: str, **labels: str) -> float:
        return delta(g0, g1, "tokengate_gateway_" + name, **labels)

    def bd(name: str, **labels: str) -> float:
        return delta(b0, b1, "tokengate_backend_" + name, **labels)

    assert gd("logins_total", outcome="success") == 2
    assert gd("logins_total", outcome="invalid_credentials") == 3
    assert gd("logins_total", outcome="rate_limited") == 1
    assert gd("rate_limited_total", limit="login-account") == 1
    assert gd("rate_limited_total", limit="login-ip") == 0
    assert gd("refresh_total", outcome="rotated") == 1
    assert gd("refresh_total", outcome="reused-revoked") == 1
    assert gd("revocations_total", reason="reuse") == 1
    assert gd("revocations_total", reason="logout") == 1

    req = "requests_total"
    assert gd(req, route="/api/v1/auth/login", method="POST", status_class="2xx") == 2
    assert gd(req, route="/api/v1/auth/login", method="POST", status_class="4xx") == 4
    assert gd(req, route="/api/v1/auth/refresh", method="POST", status_class="2xx") == 1
    assert gd(req, route="/api/v1/auth/refresh", method="POST", status_class="4xx") == 1
    assert gd(req, route="/api/v1/auth/logout", method="POST", status_class="2xx") == 1
    assert gd(req, route="/api/v1/me", method="GET", status_class="2xx") == 1
    assert gd(req, route="/api/v1/notes", method="POST", status_class="2xx") == 1
    assert gd(req, route="/api/v1/notes/{note_id}", method="GET", status_class="2xx") == 2
    assert gd(req, route="other", method="GET", status_class="4xx") == 1
    # five proxied requests, each timed in two parts
    for part in ("gateway", "backend"):
        assert gd("proxy_duration_seconds_count", part=part) == 5
    assert gd("backend_failures_total", service="backend", kind="connect") == 0

    assert bd("requests_total", route="/internal/auth/validate", method="POST", status="200") == 2
    assert bd("requests_total", route="/internal/auth/validate", method="POST", status="401") == 3
    assert bd("requests_total", route="/v1/me", method="GET", status="200") == 1
    assert bd("requests_total", route="/v1/me", method="GET", status="401") == 1
    assert bd("requests_total", route="/v1/notes/{note_id}", method="GET", status="200") == 2
    assert bd("requests_total", route="other", method="GET", status="404") == 1
    assert bd("internal_token_rejections_total", reason="missing") == 1
    assert bd("internal_token_rejections_total", reason="bad_signature") == 0
    assert bd("password_verification_seconds_count") == 5
    assert value(b1, "tokengate_backend_password_verifications_running") == 0
    assert value(b1, "tokengate_backend_password_verifications_waiting") == 0

    # labels never carry a raw path, an id or an address
    for samples in (g1, b1):
        for name, labels in samples:
            for label, label_value in labels:
                assert note_id not in label_value
                # the one exception by design: which Redis master is in use (a bounded label)
                if (name, label) != ("tokengate_gateway_redis_master", "address"):
                    assert "127.0.0.1" not in label_value
                assert "nothing-here" not in label_value

    # gauges are sampled once a second
    deadline = time.monotonic() + 5
    while True:
        g2 = scrape(scraped.gateway_metrics)
        if value(g2, "tokengate_gateway_revoked_sessions") >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value(g2, "tokengate_gateway_revoked_sessions") >= 2
    assert value(g2, "tokengate_gateway_revocation_listener_connected") == 1
    pool = value(g2, "tokengate_gateway_db_pool_connections", state="idle") + value(
        g2, "tokengate_gateway_db_pool_connections", state="in_use"
    )
    assert pool >= 1


def test_metrics_are_not_on_the_public_port(scraped: Scraped) -> None:
    for base in (scraped.stack.gateway_url, scraped.stack.backend_url):
        assert httpx.get(base + "/metrics", timeout=5).status_code in (401, 404)


def test_proxied_route_templates_match_the_backends_routes() -> None:
    from internal_auth import generate_private_key

    from backend.app import create_app
    from backend.settings import Settings

    app = create_app(
        Settings.from_env(
            {
                "DATABASE_URL": "postgresql://unused/x",
                "INTERNAL_JWT_PUBLIC_KEY": generate_private_key().public_pem(),
            }
        )
    )
    backend_routes = {r.path for r in app.routes if r.path.startswith("/v1/")}  # type: ignore[attr-defined]
    assert {"/api" + path for path in backend_routes} == set(PROXIED_ROUTES)


CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _lines(text: str, request_id: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if request_id in line and line.startswith("{"):
            data = json.loads(line)
            if data.get("request_id") == request_id:
                out.append(data)
    return out


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
def test_both_services_log_the_same_trace_id_next_to_the_request_id(
    scraped: Scraped, source: str
) -> None:
    stack = scraped.stack
    email = f"trace-{uuid.uuid4().hex[:8]}@example.test"
    stack.create_user(email, PASSWORD)
    rid = f"trace-{uuid.uuid4().hex[:12]}"
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=stack.gateway_url, transport=transport, timeout=30) as client:
        r = client.post(
            "/api/v1/auth/login",
            json={"email": email, "password": "not the password"},
            headers={"traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01", "X-Request-Id": rid},
        )
    assert r.status_code == 401
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        gateway = _lines(stack.log_text("gateway"), rid)
        backend = _lines(stack.log_text("backend"), rid)
        if gateway and backend:
            break
        time.sleep(0.1)
    assert gateway and backend
    trace_ids = {line.get("trace_id") for line in gateway + backend}
    assert len(trace_ids) == 1, (gateway, backend)
    trace_id = trace_ids.pop()
    assert isinstance(trace_id, str) and len(trace_id) == 32
    # only the trusted proxy's trace is continued
    assert (trace_id == CLIENT_TRACE) is (source == "127.0.0.2")


def test_every_metric_the_alert_rules_use_is_in_a_live_scrape(scraped: Scraped) -> None:
    rules = (Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"\btokengate_[a-z_]+", rules))
    assert len(used) >= 4
    # this stack's hop is plain HTTP: the TLS metrics are checked against a live scrape of the
    # mutual-TLS stack (tests/e2e/test_mtls_e2e.py)
    used = {name for name in used if not name.startswith("tokengate_tls_")}
    live = names(scrape(scraped.gateway_metrics)) | names(scrape(scraped.backend_metrics))
    assert used <= live, used - live


def test_each_service_exports_only_its_own_families_and_its_build(scraped: Scraped) -> None:
    # one registry per service: before, each process exported every family it had imported,
    # so the backend showed tokengate_gateway_revocation_listener_connected 0 (an alert, forever)
    gateway, backend = (
        names(scrape(scraped.gateway_metrics)),
        names(scrape(scraped.backend_metrics)),
    )
    assert not {n for n in backend if n.startswith("tokengate_gateway_")}
    assert not {n for n in gateway if n.startswith("tokengate_backend_")}
    for url, service in (
        (scraped.gateway_metrics, "gateway"),
        (scraped.backend_metrics, "backend"),
    ):
        info = value(
            scrape(url),
            f"tokengate_{service}_build_info",
            version=version(),
            python=platform.python_version(),
        )
        assert info == 1


def test_the_metrics_listener_answers_only_metrics(scraped: Scraped) -> None:
    for url in (scraped.gateway_metrics, scraped.backend_metrics):
        base = url.removesuffix("/metrics")
        for path in ("/", "/favicon.ico", "/metrics/", "/metricsx", "/api/v1/me"):
            response = httpx.get(base + path, timeout=5)
            assert response.status_code == 404, (url, path)
            assert "tokengate_" not in response.text
