"""Reloading GATEWAY_CONFIG on a running gateway (issue 25): real gateway and backend processes,
real PostgreSQL and Redis, one worker and two.

- one worker: a change is served within GATEWAY_CONFIG_RELOAD_INTERVAL; SIGHUP applies one at
  once (with a ten-minute interval) and the process survives it (uvicorn alone would die);
- two workers: a change reaches both within the interval, and the per-worker ``config_hash``
  series converge on the new value while the old one leaves the scrape (the multiprocess mode
  of prometheus-client keeps stale *label* values, hence a numeric series); SIGHUP goes to
  uvicorn's supervisor, which replaces the workers one at a time, and a replacement that cannot
  load a broken file is not started: the old workers keep serving the last good table.

Observable: ``GET /api/v1/me`` is 200 under the first table and 403 under the second (a deny).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.policy.reload import hash_metric
from tests.support.scrape import scrape
from tests.support.stack import BACKEND_ID, Stack, free_port, running_stack

pytestmark = pytest.mark.e2e

PASSWORD = "policy reload correct horse staple"
HASH = "tokengate_gateway_config_hash"
LOADED = "tokengate_gateway_config_last_reload_timestamp_seconds"
RULES = """
[[rule]]
name = "everything"
effect = "allow"
paths = ["/**"]
authenticated = true
"""
DENY_ME = """
[[rule]]
name = "not-me"
effect = "deny"
methods = ["GET"]
paths = ["/me"]
"""


def _table(backend_port: int, extra: str = "") -> str:
    return (
        f'version = 1\n\n[services.backend]\nurl = "http://127.0.0.1:{backend_port}"\n'
        f'audience = "{BACKEND_ID}"\n\n[[route]]\nprefix = "/"\nservice = "backend"\n'
        + RULES
        + extra
    )


@dataclass
class Running:
    stack: Stack
    config: Path
    backend_port: int
    metrics: str
    headers: dict[str, str]

    def write(self, text: str, *, rename: bool = False) -> str:
        if rename:
            staged = self.config.with_name(".gateway.toml.new")
            staged.write_text(text)
            os.replace(staged, self.config)
        else:
            self.config.write_text(text)
        return hashlib.sha256(text.encode()).hexdigest()

    def me(self) -> int:
        url = self.stack.gateway_url + "/api/v1/me"
        return httpx.get(url, headers=self.headers, timeout=10).status_code

    def hashes(self) -> dict[str, float]:
        """pid (or "" with one worker) -> config_hash."""
        return {
            dict(labels).get("pid", ""): value
            for (name, labels), value in scrape(self.metrics).items()
            if name == HASH
        }


def _within(seconds: float, check: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def running(
    request: pytest.FixtureRequest,
    migrated_dsn: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> Iterator[Running]:
    workers, interval = request.param
    backend_port, metrics_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(_table(backend_port))
    env = {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_CONFIG_RELOAD_INTERVAL": str(interval),
        "METRICS_PORT": str(metrics_port),
    }
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "multiproc")
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env=env,
        backend_env={"ARGON2_MEMORY_KIB": "8192"},
        gateway_args=("--workers", str(workers)),
        backend_port=backend_port,
    ) as stack:
        headers = stack.logged_in(f"reload-{free_port()}@example.test", PASSWORD)
        yield Running(
            stack, config, backend_port, f"http://127.0.0.1:{metrics_port}/metrics", headers
        )


def _gateway_pid(running: Running) -> int:
    pid = running.stack.gateway_pid
    assert pid is not None
    return pid


@pytest.mark.parametrize("running", [(1, 0.5)], indirect=True)
def test_one_worker_serves_a_change_within_the_interval(running: Running) -> None:
    first = hashlib.sha256(running.config.read_bytes()).hexdigest()
    assert running.me() == 200
    assert running.hashes() == {"": hash_metric(first)}
    loaded = next(v for (n, _), v in scrape(running.metrics).items() if n == LOADED)
    digest = running.write(_table(running.backend_port, DENY_ME))
    took = _within(5.0, lambda: running.me() == 403)
    assert took < 0.5 + 2.0
    _within(2.0, lambda: running.hashes() == {"": hash_metric(digest)})
    assert next(v for (n, _), v in scrape(running.metrics).items() if n == LOADED) > loaded
    assert '"event":"config_reloaded"' in running.stack.log_text("gateway")


@pytest.mark.parametrize("running", [(1, 600)], indirect=True)
def test_one_worker_applies_a_change_on_sighup_and_survives_it(running: Running) -> None:
    assert running.me() == 200
    running.write(_table(running.backend_port, DENY_ME), rename=True)
    time.sleep(1.0)
    assert running.me() == 200  # a ten-minute interval: nothing looked yet
    os.kill(_gateway_pid(running), signal.SIGHUP)
    assert _within(3.0, lambda: running.me() == 403) < 3.0
    # a broken file on SIGHUP: logged with its line, counted, the last good table serves on
    running.write("version = 1\n[services.backend]\nurl = 3\n")
    os.kill(_gateway_pid(running), signal.SIGHUP)
    _within(3.0, lambda: '"event":"config_reload_failed"' in running.stack.log_text("gateway"))
    assert running.me() == 403
    failed = scrape(running.metrics)[
        ("tokengate_gateway_config_reloads_total", frozenset({("outcome", "failed")}))
    ]
    assert failed == 1
    assert ":3: services.backend.url" in running.stack.log_text("gateway")


@pytest.mark.parametrize("running", [(2, 0.5)], indirect=True)
def test_two_workers_converge_and_the_old_hash_leaves_the_scrape(running: Running) -> None:
    first = hash_metric(hashlib.sha256(running.config.read_bytes()).hexdigest())
    _within(10.0, lambda: len(running.hashes()) == 2)
    assert set(running.hashes().values()) == {first}
    pids = set(running.hashes())
    second = hash_metric(running.write(_table(running.backend_port, DENY_ME)))
    _within(5.0, lambda: set(running.hashes().values()) == {second})
    assert set(running.hashes()) == pids  # the same workers, reloaded, not restarted
    assert first not in running.hashes().values()
    # every worker serves the new table (requests spread over both)
    assert {running.me() for _ in range(20)} == {403}


@pytest.mark.parametrize("running", [(2, 3600)], indirect=True)
def test_two_workers_on_sighup_are_replaced_one_at_a_time_and_a_broken_file_keeps_them(
    running: Running,
) -> None:
    _within(10.0, lambda: len(running.hashes()) == 2)
    old = running.hashes()
    second = hash_metric(running.write(_table(running.backend_port, DENY_ME), rename=True))
    os.kill(_gateway_pid(running), signal.SIGHUP)  # the supervisor: uvicorn's restart_all
    _within(30.0, lambda: len(running.hashes()) == 2 and not set(running.hashes()) & set(old))
    assert set(running.hashes().values()) == {second}
    assert {running.me() for _ in range(20)} == {403}
    # a broken file: the first replacement cannot start, the supervisor keeps the old workers
    serving = running.hashes()
    running.write("version = 1\n[services.backend]\nurl = 3\n")
    os.kill(_gateway_pid(running), signal.SIGHUP)
    _within(30.0, lambda: "aborting the restart" in running.stack.log_text("gateway"))
    assert running.hashes() == serving
    assert {running.me() for _ in range(10)} == {403}
