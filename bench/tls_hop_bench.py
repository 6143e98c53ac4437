"""The cost of mutual TLS on the gateway -> backend hop, per proxied request (issue 26).

Two gateways side by side in front of the same trivial upstream (``proxy_client_bench.py``'s
fixed 72-byte JSON), one over plain HTTP and one over mutual TLS (a CA and certificates from
``tokengate certs``, the upstream served by uvicorn with ``servicekit.tls``'s context factory and
client certificates required, the gateway with ``BACKEND_CA_FILE`` and a client certificate).
The pool keeps its connections open, so the handshake is paid once per connection and the figure
is the record layer's cost (AES-GCM both ways, plus the SSL object's buffering) on keep-alive
connections.

- **CPU time**: ``wrk -t1 -c32 GET /api/v1/me`` with a bearer token against each gateway in
  turn, rounds alternating; the gateway process's user + system time over the requests served,
  and the upstream's (the backend pays TLS too). Median of the per-round ratios.
- **Instructions** (``--instructions``, needs valgrind): ``bench/instructions_bench.py``'s
  in-process drive of ``create_app(settings)`` under callgrind, 32 requests at a time, once with
  each hop; the figure is the difference between a small and a large run over the difference in
  requests, so start-up (and the handshakes: at most 32 connections) cancel out.

Goal: TLS <= 1.15 x plain. Needs wrk, PostgreSQL and Redis for the gateway's lifespan
(``BENCH_DATABASE_URL``, ``BENCH_REDIS_URL``).

Usage: ``python bench/tls_hop_bench.py [--rounds 3] [--duration 5] [--instructions]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk_tools
from bench.cpu_bench import cpu_seconds, measure, process, upstream_and_database
from bench.proxy_client_bench import free_port, run_server, wait_port
from gateway.auth.tokens import TokenService
from gateway.settings import Settings
from tokengate import certs

HERE = Path(__file__).resolve().parent


def serve_tls_upstream(port: int, folder: Path) -> None:
    """The trivial upstream over mutual TLS, as ``tokengate backend --ssl-*`` serves it."""
    from servicekit.tls import ServerTLS

    tls = ServerTLS(
        certfile=str(folder / "backend.pem"),
        keyfile=str(folder / "backend-key.pem"),
        ca_certs=str(folder / "ca.pem"),
        cert_reqs="required",
    )
    run_server("upstream", port, "", **tls.uvicorn_options("bench"))


@contextlib.contextmanager
def tls_upstream(folder: Path) -> Iterator[tuple[int, int]]:
    """(port, pid) of the TLS upstream."""
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-tls", str(port), str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _instructions(env: dict[str, str], small: int, large: int) -> float:
    from bench.instructions_bench import instructions

    # under callgrind everything runs ~50x slower: a 2 s connect timeout would cut the TLS
    # handshakes (and the same bounds go to both hops, so the comparison stays fair)
    env = {**env, "PROXY_CONNECT_TIMEOUT": "60", "PROXY_READ_TIMEOUT": "120"}
    with tempfile.TemporaryDirectory() as tmp:
        environment = Path(tmp) / "env.json"
        environment.write_text(json.dumps({k: v for k, v in env.items() if k.isupper()}))
        counts = [
            instructions(
                [
                    sys.executable,
                    str(HERE / "instructions_bench.py"),
                    "--drive",
                    "gateway",
                    str(n),
                    str(environment),
                ],
                HERE.parent,
                env,
            )
            for n in (small, large)
        ]
    return (counts[1] - counts[0]) / (large - small)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--instructions", action="store_true", help="also count instructions")
    parser.add_argument("--small", type=int, default=320)
    parser.add_argument("--large", type=int, default=1280)
    parser.add_argument("--serve-tls", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_tls:
        serve_tls_upstream(int(args.serve_tls[0]), Path(args.serve_tls[1]))
        return 0
    wrk_tools.require_wrk()

    with (
        tempfile.TemporaryDirectory() as tmp,
        upstream_and_database("WARNING") as plain_env,
        contextlib.ExitStack() as upstreams,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        certs.init_ca(folder)
        certs.issue(folder, "backend", ips=["127.0.0.1"])
        certs.issue(folder, "gateway", client=True)
        tls_port, upstream_pid = upstreams.enter_context(tls_upstream(folder))
        tls_env = {
            **plain_env,
            "BACKEND_URL": f"https://127.0.0.1:{tls_port}",
            "BACKEND_CA_FILE": str(folder / "ca.pem"),
            "BACKEND_CLIENT_CERT_FILE": str(folder / "gateway.pem"),
            "BACKEND_CLIENT_KEY_FILE": str(folder / "gateway-key.pem"),
        }
        token, _ = TokenService(Settings.from_env(plain_env)).issue_access(
            sub="00000000-0000-0000-0000-000000000001", sid="bench", roles=["user"]
        )
        gateway = [sys.executable, "-m", "tokengate.cli", "gateway"]
        targets: dict[str, tuple[int, str]] = {}
        for name, env in (("plain", plain_env), ("tls", tls_env)):
            port = free_port()
            pid = stack.enter_context(process([*gateway, "--port", str(port)], env, port, HERE))
            targets[name] = (pid, f"http://127.0.0.1:{port}/api/v1/me")
        for pid, url in targets.values():  # warm pools, imports and caches
            measure(pid, url, token, 4, 1)
        print(
            f"cpus={os.cpu_count()} wrk -t1 -c{args.connections} -d{args.duration}s "
            "GET /api/v1/me, bearer token; CPU µs per request of the gateway process "
            "(and of the TLS upstream)"
        )
        print(f"{'round':<7}{'plain':>10}{'tls':>10}{'tls/plain':>12}{'upstream tls':>15}")
        ratios: list[float] = []
        figures: dict[str, list[float]] = {"plain": [], "tls": [], "upstream": []}
        for n in range(1, args.rounds + 1):
            plain, _ = measure(*targets["plain"], token, args.connections, args.duration)
            before = cpu_seconds(upstream_pid)
            tls, served = measure(*targets["tls"], token, args.connections, args.duration)
            upstream = (cpu_seconds(upstream_pid) - before) / served * 1e6
            figures["plain"].append(plain)
            figures["tls"].append(tls)
            figures["upstream"].append(upstream)
            ratios.append(tls / plain)
            print(f"{n:<7}{plain:>10.1f}{tls:>10.1f}{tls / plain:>12.3f}{upstream:>15.1f}")
        print(
            f"{'median':<7}{statistics.median(figures['plain']):>10.1f}"
            f"{statistics.median(figures['tls']):>10.1f}{statistics.median(ratios):>12.3f}"
            f"{statistics.median(figures['upstream']):>15.1f}"
        )
        if args.instructions:
            stack.close()  # the gateways go; the upstreams and the database stay for callgrind
            counted = {
                name: _instructions(env, args.small, args.large)
                for name, env in (("plain", plain_env), ("tls", tls_env))
            }
            ratio = counted["tls"] / counted["plain"]
            print(
                f"instructions per in-process request: plain {counted['plain'] / 1000:.1f} k, "
                f"tls {counted['tls'] / 1000:.1f} k, tls/plain {ratio:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
