"""Run the real stack for end-to-end tests and benchmarks: backend and gateway as separate
processes (``tokengate backend`` / ``tokengate gateway``, i.e. uvicorn), each on a free port, both
configured only through environment variables, against real PostgreSQL and Redis.

Usage::

    with running_stack(database_url=dsn, redis_url=url, redis_prefix=prefix) as stack:
        stack.create_user("a@example.test", "a long password")
        httpx.post(stack.gateway_url + "/api/v1/auth/login", json=...)
        stack.stop_backend(); ...; stack.start_backend()

The database must already be migrated (the ``migrated_dsn`` fixture). Each process writes its
log to a file in a temporary folder (``stack.log_text("gateway")``); the folder is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
from internal_auth import Minter, PrivateKey, TokenScope, generate_private_key

from tests.support.hop_tls import HopTLS

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_ID = "tokengate-gateway"
BACKEND_ID = "tokengate-backend"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tokengate(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokengate.cli", *args]


class StackError(RuntimeError):
    pass


class _Service:
    def __init__(
        self,
        name: str,
        env: dict[str, str],
        port: int,
        logdir: Path,
        args: tuple[str, ...] = (),
        command: list[str] | None = None,
        tls: HopTLS | None = None,
    ) -> None:
        self.name = name
        self.args = args
        #: the program, when it is not ``tokengate NAME`` (an example service)
        self.command = command
        self.env = env
        self.port = port
        # a backend over mutual TLS is probed with the gateway's client certificate
        self.verify: ssl.SSLContext | bool = tls.client() if tls is not None else True
        self.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}"
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log_path.open("ab") as log:
            program = self.command or _tokengate(self.name)
            self.proc = subprocess.Popen(
                [*program, "--host", "127.0.0.1", "--port", str(self.port), *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StackError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(self.url + "/healthz", timeout=1.0, verify=self.verify)
                if health.status_code == 200:
                    return
            time.sleep(0.1)
        raise StackError(f"{self.name} did not become healthy:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Stack:
    """A running backend + gateway pair. URLs are fixed for the life of the stack."""

    def __init__(self, backend: _Service, gateway: _Service, key: PrivateKey) -> None:
        self._logdir = gateway.log_path.parent
        self._backend = backend
        self._gateway = gateway
        self.internal_key = key
        self.backend_url = backend.url
        self.gateway_url = gateway.url
        self.backend_env = backend.env
        self.gateway_env = gateway.env
        self._minter = Minter(key, issuer=GATEWAY_ID, audience=BACKEND_ID, ttl=60)

    @property
    def logdir(self) -> Path:
        """The folder holding every process's log (``*.log``)."""
        return self._logdir

    @property
    def backend_pid(self) -> int | None:
        """The backend's process (with ``--workers N``, the parent that SIGHUP restarts)."""
        proc = self._backend.proc
        return proc.pid if proc is not None else None

    @property
    def gateway_pid(self) -> int | None:
        """The gateway process's id (benchmarks read its CPU time from ``/proc``)."""
        proc = self._gateway.proc
        return proc.pid if proc is not None else None

    def stop_backend(self) -> None:
        self._backend.stop()

    def kill_backend(self) -> None:
        """SIGKILL: no graceful shutdown, connections cut as in a crash."""
        self._backend.kill()

    def start_backend(self) -> None:
        self._backend.start()

    def restart_gateway(self) -> None:
        self._gateway.stop()
        self._gateway.start()

    @contextlib.contextmanager
    def extra_gateway(self, port: int | None = None, **env: str) -> Iterator[str]:
        """A second gateway process (same secrets and backend, ``env`` overrides); yields its
        URL. Lets benchmarks compare two configurations side by side, interleaving runs. A
        caller may pick the port up front when its settings must name its own origin."""
        port = port or free_port()
        service = _Service("gateway", {**self.gateway_env, **env}, port, self._logdir)
        service.log_path = self._logdir / f"gateway-{port}.log"
        service.start()
        try:
            yield service.url
        finally:
            service.stop()

    def create_user(self, email: str, password: str, *, admin: bool = False) -> None:
        args = ["users", "create", "--email", email, "--password-stdin"]
        if admin:
            args += ["--role", "admin"]
        done = subprocess.run(
            _tokengate(*args),
            input=password.encode(),
            env=self.backend_env,
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise StackError(f"users create failed: {done.stderr.decode(errors='replace')}")

    def revoke_sessions(self, email: str) -> subprocess.CompletedProcess[str]:
        """``tokengate sessions revoke --email`` as an operator runs it, against this stack."""
        env = {**self.gateway_env, "BACKEND_DATABASE_URL": self.backend_env["DATABASE_URL"]}
        return subprocess.run(
            _tokengate("sessions", "revoke", "--email", email),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def logged_in(self, email: str, password: str) -> dict[str, str]:
        """A new user's ``Authorization`` header, from a login through the gateway."""
        self.create_user(email, password)
        login = httpx.post(
            self.gateway_url + "/api/v1/auth/login",
            json={"email": email, "password": password},
            timeout=30,
        )
        if login.status_code != 200:
            raise StackError(f"login failed: {login.status_code} {login.text}")
        return {"Authorization": f"Bearer {login.json()['access_token']}"}

    def internal_token(
        self, *, sub: str, method: str, path: str, roles: tuple[str, ...] = ("user",)
    ) -> str:
        """An internal token for calling the backend directly (bench floor); valid 60 s."""
        return self._minter.mint(
            sub=sub, scope=TokenScope.USER_REQUEST, htm=method, htu=path, roles=roles, sid="direct"
        )

    def log_text(self, service: str) -> str:
        svc = self._gateway if service == "gateway" else self._backend
        return svc.log_path.read_text(errors="replace") if svc.log_path.exists() else ""


@contextlib.contextmanager
def running_stack(
    *,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    gateway_env: Mapping[str, str] | None = None,
    backend_env: Mapping[str, str] | None = None,
    gateway_port: int | None = None,
    gateway_args: tuple[str, ...] = (),
    backend_args: tuple[str, ...] = (),
    tls: HopTLS | None = None,
    backend_port: int | None = None,
) -> Iterator[Stack]:
    """``tls``: the hop over mutual TLS with those certificates (the backend's for 127.0.0.1)."""
    key = generate_private_key()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "INTERNAL_JWT"))}
    base.update({"GATEWAY_ID": GATEWAY_ID, "BACKEND_ID": BACKEND_ID, "LOG_LEVEL": "INFO"})
    # a caller may pick the gateway port up front when its settings must name its own origin
    # (and the backend's, when a GATEWAY_CONFIG file written up front must name it)
    backend_port, gateway_port = backend_port or free_port(), gateway_port or free_port()
    benv = {
        **base,
        "DATABASE_URL": database_url,
        "INTERNAL_JWT_PUBLIC_KEY": key.public_pem(),
        **(backend_env or {}),
    }
    genv = {
        **base,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"{redis_prefix}stack{gateway_port}:",
        "BACKEND_URL": f"{'https' if tls else 'http'}://127.0.0.1:{backend_port}",
        **(tls.gateway_env() if tls else {}),
        "JWT_ACCESS_SECRET": secrets.token_urlsafe(32),
        "JWT_REFRESH_SECRET": secrets.token_urlsafe(32),
        "INTERNAL_JWT_PRIVATE_KEY": key.private_pem(),
        "COOKIE_SECURE": "false",
        "CORS_ALLOWED_ORIGINS": "http://localhost:5173",
        **(gateway_env or {}),
    }
    with tempfile.TemporaryDirectory(prefix="tokengate-stack-") as tmp:
        if tls is not None:
            backend_args = (*tls.backend_args(), *backend_args)
        backend = _Service("backend", benv, backend_port, Path(tmp), backend_args, tls=tls)
        gateway = _Service("gateway", genv, gateway_port, Path(tmp), gateway_args)
        try:
            backend.start()
            gateway.start()
            yield Stack(backend, gateway, key)
        finally:
            gateway.stop()
            backend.stop()


@contextlib.contextmanager
def dpop_stack(
    *, database_url: str, redis_url: str, redis_prefix: str, **gateway_env: str
) -> Iterator[Stack]:
    """:func:`running_stack` whose gateway knows its own origin (``PUBLIC_ORIGIN``), so DPoP
    clients can bind their sessions, with generous login and refresh limits."""
    port = free_port()
    with running_stack(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_port=port,
        gateway_env={
            "PUBLIC_ORIGIN": f"http://127.0.0.1:{port}",
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
            "REFRESH_RATE_LIMIT": "1000/minute",
            **gateway_env,
        },
    ) as running:
        yield running
