"""The internal hop over mutual TLS, end to end: real backend (two uvicorn workers over TLS that
require a client certificate) and gateway processes, real PostgreSQL and Redis, loopback TLS.

What is tried: a client without a certificate, with another CA's certificate, and plain HTTP
against the backend's TLS port (each refused and counted); a gateway pointed at the backend under
a name its certificate does not hold, and at an impostor with a certificate from another CA
(nothing of a login reaches either); a tap on the wire between gateway and backend (it sees TLS
records, never a password); and a certificate swap under steady traffic with zero failed requests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servicekit.serve import WORKER_START_TIMEOUT

from tests.support.hop_tls import HopTLS
from tests.support.scrape import delta, names, scrape, value
from tests.support.stack import Stack, free_port, running_stack
from tokengate import certs

pytestmark = pytest.mark.e2e

PASSWORD = "mtls correct horse battery staple"
EMAIL = "mtls@example.test"
FAILURES = "tokengate_tls_handshake_failures_total"


class Hop:
    def __init__(self, stack: Stack, tls: HopTLS, other: HopTLS, metrics: str, gw_metrics: str):
        self.stack = stack
        self.tls = tls
        self.other = other
        self.metrics = metrics
        self.gateway_metrics = gw_metrics
        self.port = int(stack.backend_url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def hop(
    migrated_dsn: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hop]:
    tls = HopTLS.issue(tmp_path_factory.mktemp("hop-ca"))
    # another CA entirely, with a client certificate and a server certificate for 127.0.0.1
    other = HopTLS.issue(tmp_path_factory.mktemp("other-ca"))
    bport, gport = free_port(), free_port()
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        tls=tls,
        backend_args=("--workers", "2"),
        backend_env={"METRICS_PORT": str(bport)},
        gateway_env={
            "METRICS_PORT": str(gport),
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
        },
    ) as stack:
        stack.create_user(EMAIL, PASSWORD)
        yield Hop(
            stack,
            tls,
            other,
            f"http://127.0.0.1:{bport}/metrics",
            f"http://127.0.0.1:{gport}/metrics",
        )


def _raw_exchange(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    """One HTTP/1.1 request over TLS straight to the backend; its answer, or b"" if refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
                return conn.recv(4096)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def _gateway_to(hop: Hop, backend_url: str) -> contextlib.AbstractContextManager[str]:
    """A second gateway (same secrets and certificates) whose backend is ``backend_url``."""
    return hop.stack.extra_gateway(BACKEND_URL=backend_url, METRICS_PORT="")


def _login(base_url: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=15) as client:
        return client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})


def _wait_counted(hop: Hop, before: dict[Any, float], reason: str) -> float:
    # the worker writes its counter as the handshake fails; the scrape may race it by a hair
    deadline = time.monotonic() + 5
    while True:
        moved = delta(before, scrape(hop.metrics), FAILURES, service="backend", reason=reason)
        if moved or time.monotonic() > deadline:
            return moved
        time.sleep(0.1)


def test_login_proxied_calls_and_readiness_over_mutual_tls(hop: Hop) -> None:
    login = _login(hop.stack.gateway_url)
    assert login.status_code == 200, login.text
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    with httpx.Client(base_url=hop.stack.gateway_url, headers=auth, timeout=15) as client:
        me = client.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["email"] == EMAIL
        note = client.post("/api/v1/notes", json={"title": "over TLS", "body": "sealed"})
        assert note.status_code == 201, note.text
        assert client.get(f"/api/v1/notes/{note.json()['id']}").json()["body"] == "sealed"
    ready = httpx.get(hop.stack.gateway_url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["backend"] is True


def test_a_client_without_a_certificate_is_refused_and_counted(hop: Hop) -> None:
    # the same trust, with and without the client certificate: only the certificate differs
    assert _raw_exchange(hop.port, hop.tls.client()).startswith(b"HTTP/1.1 200")
    before = scrape(hop.metrics)
    assert _raw_exchange(hop.port, hop.tls.client(None)) == b""
    assert _wait_counted(hop, before, "no_certificate") == 1


def test_a_certificate_from_another_ca_is_refused_and_counted(hop: Hop) -> None:
    # trusts the right server, presents a client certificate another CA signed
    context = hop.tls.client(None)
    context.load_cert_chain(hop.other.cert("gateway"), hop.other.key("gateway"))
    before = scrape(hop.metrics)
    assert _raw_exchange(hop.port, context) == b""
    assert _wait_counted(hop, before, "untrusted_certificate") == 1


def test_plain_http_to_the_tls_port_is_refused_and_counted(hop: Hop) -> None:
    before = scrape(hop.metrics)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{hop.port}/healthz", timeout=5)
    assert _wait_counted(hop, before, "plaintext") == 1


def test_a_backend_certificate_for_another_name_is_refused_by_the_gateway(hop: Hop) -> None:
    """The backend's certificate names 127.0.0.1 only: reached as ``localhost`` it is the wrong
    host to the gateway, which sends nothing, logs no password, and says so in readiness."""
    url = f"https://localhost:{hop.port}"
    with _gateway_to(hop, url) as gateway:
        assert _login(gateway).status_code == 503
        ready = httpx.get(gateway + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["backend"].startswith(
            "unreachable"
        )
        token = _login(hop.stack.gateway_url).json()["access_token"]
        proxied = httpx.get(
            gateway + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert proxied.status_code == 502, proxied.text
    # and a client verifying the name the same way refuses it too
    assert _raw_exchange(hop.port, hop.tls.client(), host="localhost") == b""


class _Relay:
    """A TCP relay in front of ``target``: records every byte the gateway sends through it (a
    tap on the internal network), or, with ``context``, terminates TLS itself (an impostor)."""

    def __init__(self, target: int | None, context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.context = context
        self.seen = bytearray()
        self.handshakes = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        if self.context is not None:
            with (
                contextlib.suppress(OSError),
                self.context.wrap_socket(conn, server_side=True) as s,
            ):
                self.handshakes += 1
                self.seen += s.recv(65536)
            return
        assert self.target is not None
        upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)

        def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    if record:
                        self.seen += data
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(upstream, conn, False), daemon=True).start()
        pump(conn, upstream, True)

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def test_a_tap_on_the_hop_sees_tls_records_never_the_password(hop: Hop) -> None:
    """Sniffing the internal network: the login's password crosses the hop (the credential
    check), and all the tap gets is TLS. Over the old plain-HTTP hop it read the password."""
    tap = _Relay(hop.port)
    try:
        with _gateway_to(hop, f"https://127.0.0.1:{tap.port}") as gateway:
            assert _login(gateway).status_code == 200
    finally:
        tap.close()
    assert len(tap.seen) > 1000
    assert tap.seen[0] == 0x16  # a TLS handshake record, not an HTTP request line
    assert PASSWORD.encode() not in tap.seen and EMAIL.encode() not in tap.seen
    assert b"/internal/auth/validate" not in tap.seen and b"X-Internal-Auth" not in tap.seen


def test_an_impostor_backend_gets_no_handshake_and_no_password(hop: Hop, tmp_path: Path) -> None:
    """Backend impersonation: something on the internal network answers where the backend is
    expected, with a certificate for the right address from a CA the gateway does not trust.
    The gateway refuses the handshake, so the login fails closed (503) and no byte of it leaks."""
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    impostor.load_cert_chain(hop.other.cert("backend"), hop.other.key("backend"))
    relay = _Relay(None, impostor)
    try:
        with _gateway_to(hop, f"https://127.0.0.1:{relay.port}") as gateway:
            assert _login(gateway).status_code == 503
            assert (
                httpx.get(gateway + "/readyz", timeout=10)
                .json()["checks"]["backend"]
                .startswith("unreachable")
            )
    finally:
        relay.close()
    assert relay.handshakes == 0 and PASSWORD.encode() not in relay.seen


def test_every_tls_metric_the_alert_rules_use_is_in_a_live_scrape(hop: Hop) -> None:
    rules = (Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"\btokengate_tls_[a-z_]+", rules))
    assert used
    assert used <= names(scrape(hop.metrics)) & names(scrape(hop.gateway_metrics))


def test_expiry_gauges_on_both_services(hop: Hop) -> None:
    served = value(
        scrape(hop.metrics),
        "tokengate_tls_certificate_expiry_seconds",
        service="backend",
        role="server",
    )
    presented = value(
        scrape(hop.gateway_metrics),
        "tokengate_tls_certificate_expiry_seconds",
        service="gateway",
        role="client",
    )
    for seconds in (served, presented):
        assert 29 * 86400 < seconds <= 30 * 86400


def _served_serial(port: int, tls: HopTLS) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        tls.client().wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.mark.fault
def test_a_certificate_swap_under_steady_traffic_fails_no_request(hop: Hop) -> None:
    """Re-issue the backend's certificate and SIGHUP its parent: uvicorn starts a new worker,
    waits until it serves, then stops an old one, one at a time, so the listening socket always
    has a worker behind it. The gateway's keep-alive connections to a retiring worker end; an
    idempotent request caught on one is resent on a fresh connection (the pool's one resend)."""
    old = _served_serial(hop.port, hop.tls)
    token = _login(hop.stack.gateway_url).json()["access_token"]
    results: list[int | str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(
            base_url=hop.stack.gateway_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=15,
        ) as client:
            while not stop.is_set():
                try:
                    results.append(client.get("/api/v1/me").status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)
        certs.issue(hop.tls.folder, "backend", ips=["127.0.0.1"], force=True)
        pid = hop.stack.backend_pid
        assert pid is not None
        os.kill(pid, signal.SIGHUP)
        # each replacement may take up to servicekit.serve.WORKER_START_TIMEOUT on a busy host
        deadline = time.monotonic() + 2 * WORKER_START_TIMEOUT + 10
        # both workers replaced: every new connection gets the new certificate
        while time.monotonic() < deadline:
            if all(_served_serial(hop.port, hop.tls) != old for _ in range(8)):
                break
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert all(_served_serial(hop.port, hop.tls) != old for _ in range(8)), hop.stack.log_text(
        "backend"
    )[-3000:]
    failed = [r for r in results if r != 200]
    assert len(results) > 200 and failed == [], (len(results), failed[:10])


def _request(conn: ssl.SSLSocket) -> bytes:
    """One keep-alive ``GET /healthz`` on an open connection: its whole answer (a JSON body)."""
    conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: backend\r\n\r\n")
    answer = b""
    while not (b"\r\n\r\n" in answer and answer.endswith(b"}")):
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


@pytest.mark.fault
def test_one_worker_reloads_its_certificate_in_place_on_sighup(hop: Hop, tmp_path: Path) -> None:
    """Without a supervisor there is no worker to swap: SIGHUP loads the files again into the
    live context. New handshakes get the new certificate, open connections keep working, the
    process stays up, and a broken file leaves the certificate that was serving."""
    tls = HopTLS.issue(tmp_path / "one")
    port = free_port()
    env = {**hop.stack.backend_env, "METRICS_PORT": ""}
    cmd = [
        sys.executable,
        "-m",
        "tokengate.cli",
        "backend",
        "--port",
        str(port),
        *tls.backend_args(),
    ]
    log = tmp_path / "backend.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if _raw_exchange(port, tls.client()).startswith(b"HTTP/1.1 200"):
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        old = _served_serial(port, tls)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            tls.client().wrap_socket(raw, server_hostname="127.0.0.1") as kept,
        ):
            assert _request(kept).startswith(b"HTTP/1.1 200")
            certs.issue(tls.folder, "backend", ips=["127.0.0.1"], force=True)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while _served_serial(port, tls) == old:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            assert _request(kept).startswith(b"HTTP/1.1 200")  # the open connection lives on
        new = _served_serial(port, tls)
        Path(tls.cert("backend")).write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None
        assert _served_serial(port, tls) == new
        assert "certificate_reload_failed" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
