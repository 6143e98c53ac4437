"""Gateway CPU per proxied request next to a reference proxy (issue 13's hot-path goal).

Both proxies run as their own uvicorn process (uvloop, httptools, one worker, access log off) in
front of the same trivial upstream (``bench/proxy_client_bench.py``'s fixed 72-byte JSON), and
``wrk -t1 -c32`` sends ``GET /api/v1/me`` with a valid bearer access token to each in turn. The
figure is the proxy process's CPU time (user + system, from ``/proc/<pid>/stat``) over the
requests wrk completed; wrk and the upstream run on the same cores but are not counted.

- ``gateway``: ``tokengate gateway`` with its defaults, logging at ``LOG_LEVEL`` (``WARNING``
  unless ``--log-level`` says otherwise: the reference has no access log either);
- ``baseline`` (with ``--baseline-src DIR``): the gateway of another checkout, e.g. the commit
  before a change, measured in the same run for a before/after table;
- ``reference``: ``bench/reference_proxy.py`` (HS256 verify every request, no caching; a fresh
  EdDSA internal token per request; aiohttp keep-alive pool).

Rounds alternate (gateway, reference, gateway, …) so drift on this shared machine hits both; the
table shows each round and the median ratio. Goal: gateway <= 0.8 x reference. The gateway's
lifespan needs PostgreSQL and Redis (``BENCH_DATABASE_URL``, ``BENCH_REDIS_URL``); the proxied
path touches neither. Needs ``wrk``.

Usage: ``python bench/cpu_bench.py [--rounds 5] [--duration 5] [--connections 32]
[--baseline-src DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench import wrk_tools
from bench.proxy_client_bench import free_port, gateway_environment, serve, wait_port
from bench.stack_bench import scratch_database
from gateway.auth.tokens import TokenService
from gateway.settings import Settings
from tokengate.migrate import migrate

HERE = Path(__file__).resolve().parent
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; everything after its closing parenthesis splits.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], port: int, cwd: Path) -> Iterator[int]:
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def upstream_and_database(log_level: str) -> Iterator[dict[str, str]]:
    """The trivial upstream and a migrated, throw-away database (dropped afterwards; the
    gateway rebuilds its revocation set from the ledger at start-up): a gateway environment."""
    up_port = free_port()
    admin_dsn = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with serve("upstream", up_port), scratch_database(admin_dsn) as dsn:
        asyncio.run(migrate(dsn))
        yield {
            **gateway_environment(f"http://127.0.0.1:{up_port}", log_level),
            "DATABASE_URL": dsn,
        }


def measure(pid: int, url: str, token: str, connections: int, duration: int) -> tuple[float, int]:
    """(CPU µs per request, requests) for one wrk run against the process ``pid``."""
    headers = {"Authorization": f"Bearer {token}"}
    before = cpu_seconds(pid)
    result = wrk_tools.run(url, connections=connections, duration=duration, headers=headers)
    used = cpu_seconds(pid) - before
    if result.errors:
        # wrk's 2 s timeouts on a saturated machine; the figure counts completed requests only
        print(f"(wrk: {result.errors} socket errors against {url})", file=sys.stderr)
    return used / result.requests * 1e6, result.requests


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a checkout of an earlier commit: its gateway is measured in the same run too",
    )
    args = parser.parse_args()
    wrk_tools.require_wrk()

    with upstream_and_database(args.log_level) as env, contextlib.ExitStack() as stack:
        token, _ = TokenService(Settings.from_env(env)).issue_access(
            sub="00000000-0000-0000-0000-000000000001", sid="bench", roles=["user"]
        )
        gateway = [sys.executable, "-m", "tokengate.cli", "gateway"]
        # name -> (command, environment, working directory)
        commands: dict[str, tuple[list[str], dict[str, str], Path]] = {}
        if args.baseline_src is not None:
            src = args.baseline_src.resolve()
            # Run from the earlier tree with its folders first on the path, so its packages
            # shadow this checkout's (the working directory is on the path before anything).
            baseline_env = {**env, "PYTHONPATH": f"{src}{os.pathsep}{src / 'libs'}"}
            commands["baseline"] = (gateway, baseline_env, src)
        commands["gateway"] = (gateway, env, HERE.parent)
        commands["reference"] = ([sys.executable, str(HERE / "reference_proxy.py")], env, HERE)
        targets: dict[str, tuple[int, str]] = {}
        for name, (cmd, cmd_env, cwd) in commands.items():
            port = free_port()
            pid = stack.enter_context(process([*cmd, "--port", str(port)], cmd_env, port, cwd))
            targets[name] = (pid, f"http://127.0.0.1:{port}/api/v1/me")
        for pid, url in targets.values():  # warm pools, imports and caches
            measure(pid, url, token, 4, 1)
        print(
            f"cpus={os.cpu_count()} wrk -t1 -c{args.connections} -d{args.duration}s "
            f"GET /api/v1/me, bearer token, gateway LOG_LEVEL={args.log_level}; "
            "CPU µs per request (user+system of the proxy process / requests served)"
        )
        names = list(targets)
        print(
            "round "
            + "".join(f"{n:>12}" for n in names)
            + "".join(f"{n + '/ref':>14}" for n in names if n != "reference")
        )
        figures: dict[str, list[float]] = {n: [] for n in names}
        for n in range(1, args.rounds + 1):
            for name in names:
                pid, url = targets[name]
                figures[name].append(measure(pid, url, token, args.connections, args.duration)[0])
            print(_row(str(n), {k: v[-1:] for k, v in figures.items()}))
        print(_row("median", figures))
    return 0


def _row(label: str, figures: dict[str, list[float]]) -> str:
    """One table row: each target's median µs/request, then each one's median ratio to the
    reference (the median of the per-round ratios, so drift between rounds cancels)."""
    ref = figures["reference"]
    cells = "".join(f"{statistics.median(v):>12.1f}" for v in figures.values())
    ratios = "".join(
        f"{statistics.median(a / b for a, b in zip(v, ref, strict=True)):>14.2f}"
        for k, v in figures.items()
        if k != "reference"
    )
    return f"{label:<6}{cells}{ratios}"


if __name__ == "__main__":
    raise SystemExit(main())
