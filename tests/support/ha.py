"""High-availability topologies from the machine's own binaries, on loopback, for fault tests.

- :class:`SentinelSet`: two ``redis-server``s (a master and its replica) and three sentinels
  (``redis-server --sentinel``) watching them, with a short ``down-after-milliseconds`` so a
  failover takes about two seconds. The data servers and the sentinels have *different*
  passwords, so a client that sends the wrong one to either fails.
- :class:`PostgresPair`: a PostgreSQL primary and a streaming standby made from it with
  ``pg_basebackup -R``, promoted with ``pg_ctl promote``. The binaries come from
  ``/usr/lib/postgresql/<version>/bin``; they refuse to run as root, so under root they run as the
  ``postgres`` system user, with their data in a temporary folder it owns.

Every process is a child of the test on a free port, so a signal reaches only what it started.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from tests.support.servers import (
    _accepts,
    _stop_process,
    free_port,
    postgres_command,
    redis_args,
)

START_TIMEOUT = 30.0
SERVICE = "tokengate"
DATA_PASSWORD = "ha-data-password"
SENTINEL_PASSWORD = "ha-sentinel-password"
#: a sentinel calls the master down after this long without an answer (and then fails over)
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _wait_port(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text(errors='replace')[-2000:]}")
        if _accepts(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start")


class _RedisProcess:
    def __init__(self, binary: str, folder: Path, name: str, port: int) -> None:
        self.binary, self.folder, self.name, self.port = binary, folder, name, port
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.folder,
            )
        _wait_port(self.proc, self.port, self.log, self.name)

    def kill(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGKILL)
            self.proc = None


class SentinelSet:
    """A Redis master, one replica and three sentinels (quorum 2)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary on this machine")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data = [_RedisProcess(binary, folder, f"redis-{i}", free_port()) for i in range(2)]
        self.sentinels = [
            _RedisProcess(binary, folder, f"sentinel-{i}", free_port()) for i in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{DATA_PASSWORD}@{hosts}/{SERVICE}"

    def _data_args(self, server: _RedisProcess, replica_of: int | None) -> list[str]:
        args = [
            *redis_args(server.port, self.folder),
            "--requirepass",
            DATA_PASSWORD,
            "--masterauth",
            DATA_PASSWORD,
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return args

    def start(self) -> None:
        master, replica = self.data
        master.start(*self._data_args(master, None))
        replica.start(*self._data_args(replica, master.port))
        for sentinel in self.sentinels:
            conf = self.folder / f"{sentinel.name}.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {sentinel.port}",
                        "bind 127.0.0.1",
                        f"dir {self.folder}",
                        f"requirepass {SENTINEL_PASSWORD}",
                        f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                        f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2",
                        f"sentinel auth-pass {SERVICE} {DATA_PASSWORD}",
                        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                        f"sentinel parallel-syncs {SERVICE} 1",
                        "",
                    ]
                )
            )
            sentinel.start(str(conf), "--sentinel")
        self.wait_replicated()

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=DATA_PASSWORD, socket_timeout=2.0)

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(
            port=self.sentinels[index].port, password=SENTINEL_PASSWORD, socket_timeout=2.0
        )

    def master_port(self) -> int | None:
        """The master the sentinels name now (``None`` while none does)."""
        for i in range(len(self.sentinels)):
            try:
                with self.sentinel_client(i) as client:
                    _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def role(self, port: int) -> str | None:
        try:
            with self.client(port) as client:
                role = client.execute_command("ROLE")
        except redis.RedisError:
            return None
        name = role[0]
        return name.decode() if isinstance(name, bytes) else str(name)

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Until the master has a connected, caught-up replica and every sentinel knows both."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            master = self.master_port()
            if master is not None and self.role(master) == "master":
                try:
                    with self.client(master) as client:
                        info = client.info("replication")
                    with self.sentinel_client() as sentinel:
                        known = sentinel.sentinel_slaves(SERVICE)
                except redis.RedisError:
                    info, known = {}, []
                replicas = [v for k, v in info.items() if k.startswith("slave")]
                up = [r for r in replicas if isinstance(r, dict) and r.get("state") == "online"]
                if up and any(not s.get("is_sdown") for s in known):
                    return
            time.sleep(0.2)
        raise RuntimeError("the Redis replica did not catch up")

    def by_port(self, port: int) -> _RedisProcess:
        return next(s for s in self.data if s.port == port)

    def restart(self, server: _RedisProcess) -> None:
        """Start a killed data server again as it was first started (a master, empty): the
        sentinels must turn it into a replica of the new master."""
        server.start(*self._data_args(server, None))

    def stop(self) -> None:
        for process in [*self.sentinels, *self.data]:
            process.kill()


# -- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not versions:
        pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql")
    return versions[-1].parent


class PostgresPair:
    """A primary and a ``pg_basebackup -R`` standby, both on 127.0.0.1, trust authentication."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        # its own folder straight under the system's temporary one (world-traversable): a
        # folder inside another test's 0700 folder would lock out the postgres user
        self.folder = Path(tempfile.mkdtemp(prefix="tokengate-pg-ha-"))
        self.ports = [free_port(), free_port()]
        self.data = [self.folder / "primary", self.folder / "standby"]
        self.procs: list[subprocess.Popen[bytes] | None] = [None, None]
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            try:
                pwd.getpwnam(self.user)
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")

    def dsn(self, role: str = "postgres", database: str = "postgres", index: int = 0) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.ports[index]}/{database}"

    def multi_dsn(self, role: str, database: str = "postgres") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"postgresql://{role}@{hosts}/{database}?target_session_attrs=read-write"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*args], capture_output=True, user=self.user, cwd=self.folder, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def init(self) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data[0]),
            "--auth=trust",
            "--encoding=utf8",
            "--no-sync",
            "-U",
            "postgres",
        )
        # the gateway's fault test wants a standby that is at most a moment behind
        with (self.data[0] / "postgresql.conf").open("a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 5\nfsync = off\n")

    def start(self, index: int) -> None:
        log = self.folder / f"postgres-{index}.log"
        with log.open("ab") as out:
            self.procs[index] = subprocess.Popen(
                postgres_command(self.bin, self.data[index], self.ports[index]),
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.user,
                cwd=self.folder,
                start_new_session=True,
            )
        proc = self.procs[index]
        assert proc is not None
        _wait_port(proc, self.ports[index], log, f"postgres {index}")
        # the port opens before the server takes sessions ("the database system is starting up")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [
                    str(self.bin / "pg_isready"),
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.ports[index]),
                ],
                timeout=10,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres {index} does not take sessions")

    def make_standby(self) -> None:
        """``pg_basebackup -R`` from the running primary, then start the standby."""
        self._run(
            str(self.bin / "pg_basebackup"),
            "-D",
            str(self.data[1]),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.ports[0]),
            "-U",
            "postgres",
            "-X",
            "stream",
            "-R",
        )
        self.start(1)

    def stop(self, index: int) -> None:
        """Fast shutdown (SIGINT): sessions end, the last WAL goes to the standby."""
        proc = self.procs[index]
        if proc is not None:
            _stop_process(proc, signal.SIGINT)
            self.procs[index] = None

    def promote(self, index: int = 1) -> None:
        self._run(str(self.bin / "pg_ctl"), "promote", "-w", "-D", str(self.data[index]))

    def close(self) -> None:
        for index in range(len(self.procs)):
            self.stop(index)
        shutil.rmtree(self.folder, ignore_errors=True)
