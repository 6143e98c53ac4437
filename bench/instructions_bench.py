"""Instructions per proxied request, counted by callgrind: a repeatable A/B for the hot path.

CPU time per request on a shared or virtualised machine moves by a third from one minute to the
next (``bench/README.md``), which hides the few-percent changes a hot-path edit makes. This bench
counts instructions instead (``valgrind --tool=callgrind``), which repeat to within about half a
percent whatever else the machine is doing.

What is counted: the ASGI app (the gateway's ``create_app(settings)``, the reference proxy of
``bench/reference_proxy.py``, or the gateway of another checkout) driven **in process**, 32
``GET /api/v1/me`` requests at a time with a valid bearer token, against the trivial upstream of
``proxy_client_bench.py`` in its own process (not counted). uvicorn's HTTP parsing and the kernel's
work are not in the figure; everything the app does per request, aiohttp's hop included, is. Each
target runs twice (``--small`` and ``--large`` requests after a warm-up) and the figure is the
difference divided by the difference in requests, so start-up and import costs cancel.

With ``--through-protocol`` each request goes in as bytes through uvicorn's HTTP protocol (the
gateway's own, with its connection limits, when the checkout has one; uvicorn's
``HttpToolsProtocol`` otherwise, and for the reference) over an in-memory transport, 32 kept
connections: the cost of parsing the head and of the limits is then in the figure too.

``--policy`` adds the gateway with a ``GATEWAY_CONFIG`` of one service and one rule
(``policy-1``) and of 100 services and 1,000 rules (``policy``, ``bench/policy_config.py``) next
to the one-service, no-file gateway (issue 25: within 5 %).

Usage: ``python bench/instructions_bench.py [--baseline-src DIR] [--policy] [--small 320]
[--large 1280] [--through-protocol]``
(about two minutes per target; needs ``valgrind`` and the services the gateway's lifespan opens:
``BENCH_DATABASE_URL``, ``BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# appended, not prepended: a baseline checkout on PYTHONPATH must shadow this one
sys.path.append(str(HERE.parent))

HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
CONCURRENCY = 32
WARM_UP = 4 * CONCURRENCY

ASGI = Callable[..., Awaitable[None]]


async def _drive(app: ASGI, token: str, requests: int) -> None:
    """Run the app's lifespan, then ``requests`` proxied requests, 32 at a time."""
    headers = [*HEADERS, (b"authorization", b"Bearer " + token.encode())]

    async def one() -> None:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": "/api/v1/me",
            "raw_path": b"/api/v1/me",
            "query_string": b"",
            "headers": list(headers),
            "state": {},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"the app answered {sent[0]['status']}: {sent[1:]}")

    async def batches() -> None:
        for _ in range((WARM_UP + requests) // CONCURRENCY):
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))

    await _in_lifespan(app, batches)


async def _in_lifespan(app: ASGI, work: Callable[[], Awaitable[None]]) -> None:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan start-up failed: {started}")
    await work()
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan


class _Transport(asyncio.Transport):
    """An in-memory socket: what the protocol writes is kept, nothing is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data.extend(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}
        return extra.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def _protocol_factory(target: str) -> Callable[..., asyncio.Protocol]:
    """The protocol ``tokengate gateway`` serves with in the checkout on the path; uvicorn's own
    for the reference and for checkouts before the connection limits."""
    import servicekit
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    # Looked for in the checkout's own folder: the editable install's finder would otherwise
    # supply this checkout's module to a baseline that has none.
    if target == "reference" or not (Path(servicekit.__file__).parent / "connections").is_dir():
        return HttpToolsProtocol
    from servicekit.connections import ConnectionLimits, uvicorn_options

    factory: Callable[..., asyncio.Protocol] = uvicorn_options(ConnectionLimits())["http"]
    return factory


async def _drive_protocol(app: ASGI, token: str, requests: int, target: str) -> None:
    """``_drive`` with each request fed as bytes to the HTTP protocol, on 32 kept connections."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    config = Config(app=app, lifespan="off", proxy_headers=False, log_config=None)
    config.load()
    factory = _protocol_factory(target)
    request = b"GET /api/v1/me HTTP/1.1\r\n" + b"".join(
        name + b": " + value + b"\r\n" for name, value in HEADERS
    )
    request += b"authorization: Bearer " + token.encode() + b"\r\n\r\n"
    loop = asyncio.get_running_loop()

    async def connection(count: int) -> None:
        state, transport = ServerState(), _Transport()
        protocol = factory(config=config, server_state=state, app_state={}, _loop=loop)
        protocol.connection_made(transport)
        for _ in range(count):
            protocol.data_received(request)
            await asyncio.gather(*state.tasks)
            if not transport.data.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"the app answered {bytes(transport.data[:200])!r}")
            transport.data.clear()
        protocol.connection_lost(None)

    async def connections() -> None:
        count = (WARM_UP + requests) // CONCURRENCY
        await asyncio.gather(*(connection(count) for _ in range(CONCURRENCY)))

    await _in_lifespan(app, connections)


def drive_main(target: str, requests: int, environment: Path) -> None:
    """The process callgrind watches: build the target app and drive it."""
    import uvloop

    env: dict[str, str] = json.loads(environment.read_text())
    os.environ.update(env)
    from gateway.auth.tokens import TokenService
    from gateway.settings import Settings

    settings = Settings.from_env(env)
    token, _ = TokenService(settings).issue_access(
        sub="00000000-0000-0000-0000-000000000001", sid="bench", roles=["user"]
    )
    app: ASGI
    if target == "reference":
        from bench.reference_proxy import ReferenceProxy

        app = ReferenceProxy(settings)
    else:
        from gateway.app import create_app

        app = create_app(settings)
    if os.environ.get("BENCH_THROUGH_PROTOCOL") == "1":
        uvloop.run(_drive_protocol(app, token, requests, target))
    else:
        uvloop.run(_drive(app, token, requests))


def instructions(command: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Total instructions callgrind counted for ``command``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
            cwd=cwd,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no total")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-src", type=Path, help="another checkout's gateway, counted too")
    parser.add_argument(
        "--policy", action="store_true", help="also the gateway with 100 services, 1,000 rules"
    )
    parser.add_argument("--small", type=int, default=320)
    parser.add_argument("--large", type=int, default=1280)
    parser.add_argument(
        "--through-protocol",
        action="store_true",
        help="feed each request as bytes through uvicorn's HTTP protocol (the head parsing and "
        "the gateway's connection limits counted too)",
    )
    parser.add_argument(
        "--drive", nargs=3, metavar=("TARGET", "REQUESTS", "ENV"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.drive:
        drive_main(args.drive[0], int(args.drive[1]), Path(args.drive[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2

    from bench.cpu_bench import upstream_and_database

    with upstream_and_database("WARNING") as env, tempfile.TemporaryDirectory() as tmp:
        variables = {k: v for k, v in env.items() if k.isupper()}
        environment = Path(tmp) / "env.json"
        if args.through_protocol:
            env = {**env, "BENCH_THROUGH_PROTOCOL": "1"}
            variables["BENCH_THROUGH_PROTOCOL"] = "1"
        environment.write_text(json.dumps(variables))
        # name -> (working directory, extra path entries, environment): the script itself
        # puts its own checkout on the path, so a baseline's folders go first through PYTHONPATH
        targets: dict[str, tuple[Path, str, Path]] = {}
        if args.baseline_src is not None:
            src = args.baseline_src.resolve()
            targets["baseline"] = (src, f"{src}{os.pathsep}{src / 'libs'}", environment)
        targets["gateway"] = (HERE.parent, "", environment)
        if args.policy:
            from bench.policy_config import large_config

            # a file of one service and one rule, then the large one: what having a file
            # costs, and what its size adds
            for name, services, rules in (("policy-1", 1, 1), ("policy", 100, 1000)):
                config = Path(tmp) / f"{name}.toml"
                config.write_text(
                    large_config(variables["BACKEND_URL"], services=services, rules=rules)
                )
                with_file = Path(tmp) / f"env-{name}.json"
                with_file.write_text(json.dumps({**variables, "GATEWAY_CONFIG": str(config)}))
                targets[name] = (HERE.parent, "", with_file)
        targets["reference"] = (HERE.parent, "", environment)
        how = "through the HTTP protocol" if args.through_protocol else "in-process"
        print(
            f"instructions per {how} GET /api/v1/me ({CONCURRENCY} at a time, bearer token), "
            f"from runs of {args.small} and {args.large} requests"
        )
        figures: dict[str, float] = {}
        for name, (cwd, path, target_env) in targets.items():
            run_env = {**env, "PYTHONPATH": path} if path else dict(env)
            target = "reference" if name == "reference" else "gateway"
            counts = [
                instructions(
                    [
                        sys.executable,
                        str(HERE / "instructions_bench.py"),
                        "--drive",
                        target,
                        str(n),
                        str(target_env),
                    ],
                    cwd,
                    run_env,
                )
                for n in (args.small, args.large)
            ]
            figures[name] = (counts[1] - counts[0]) / (args.large - args.small)
            ratio = figures[name] / figures["reference"] if "reference" in figures else None
            print(
                f"{name:<10}{figures[name] / 1000:>10.1f} k"
                + (f"   {ratio:.3f} of the reference" if ratio else ""),
                flush=True,
            )
        for name, value in figures.items():
            if name != "reference":
                print(f"{name}/reference: {value / figures['reference']:.3f}")
        for name in ("policy-1", "policy"):
            if name in figures:
                print(f"{name}/gateway: {figures[name] / figures['gateway']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
