"""Many services behind one gateway, end to end (issue 20): the real gateway, the real backend and
the example files service (examples/files/) as three processes, started from one route table
(examples/gateway.toml) with the environment compose.yaml gives each of them, against real
PostgreSQL and Redis. A relay on the internal network (a socket pipe in front of the files
service, as a compromised neighbour would sit) captures the internal tokens the gateway sends,
so a captured token can be replayed at another service."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from internal_auth import generate_private_key

from tests.support.stack import ROOT, _Service, free_port

pytestmark = pytest.mark.e2e

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
EXAMPLE = (ROOT / "examples" / "gateway.toml").read_text()
PASSWORD = "multiservice e2e correct horse"
RULE_NAMES = re.compile(r"notes|admin-users|files-read|files-public|files-admin|no-file-deletes")
_VAR = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def compose_env(service: str, values: dict[str, str]) -> dict[str, str]:
    """``service``'s environment as compose renders it from ``.env`` ``values`` (defaults kept)."""
    out: dict[str, str] = {}
    for name, raw in COMPOSE[service]["environment"].items():

        def sub(match: re.Match[str]) -> str:
            default = re.match(r"\$\{\w+:?-([^}]*)\}", match.group(0))
            return values.get(match.group(1), default.group(1) if default else "")

        out[name] = _VAR.sub(sub, str(raw))
    return out


class Relay:
    """A TCP pipe to ``target`` that remembers every X-Internal-Auth value passing through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.tokens: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, watch: bool) -> None:
            seen = b""
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if watch:
                        seen = (seen + data)[-16384:]
                        for token in re.findall(rb"(?i)x-internal-auth: ([\w.-]+)\r\n", seen):
                            if token.decode() not in self.tokens:
                                self.tokens.append(token.decode())
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer, True), copy(up_reader, writer, False))

    def __enter__(self) -> Relay:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Multi:
    def __init__(self, gateway: str, backend: str, files: str, relay: Relay, logdir: Path) -> None:
        self.gateway, self.backend, self.files = gateway, backend, files
        self.relay = relay
        self.logdir = logdir
        self.client = httpx.Client(base_url=gateway, timeout=30)

    def login(self, email: str) -> dict[str, str]:
        r = self.client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.fixture(scope="module")
def multi(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Multi]:
    key = generate_private_key()
    dotenv = {  # what .env would hold (tokengate keys generate)
        "INTERNAL_JWT_PUBLIC_KEY": key.public_pem(),
        "INTERNAL_JWT_PRIVATE_KEY": key.private_pem(),
        "JWT_ACCESS_SECRET": secrets.token_urlsafe(32),
        "JWT_REFRESH_SECRET": secrets.token_urlsafe(32),
        "POSTGRES_PASSWORD": "unused",
        "TOKENGATE_BACKEND_DB_PASSWORD": "unused",
        "TOKENGATE_GATEWAY_DB_PASSWORD": "unused",
    }
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "INTERNAL_JWT", "BACKEND_", "GATEWAY_", "FILES_"))
    }
    ports = {name: free_port() for name in ("backend", "files", "gateway")}
    with (
        tempfile.TemporaryDirectory(prefix="tokengate-multi-") as tmp,
        Relay(ports["files"]) as relay,
    ):
        logdir = Path(tmp)
        # The same file compose mounts; only the addresses differ (compose's DNS names -> ports).
        config = logdir / "gateway.toml"
        config.write_text(
            EXAMPLE.replace("http://backend:8001", f"http://127.0.0.1:{ports['backend']}").replace(
                "http://files:8002", f"http://127.0.0.1:{relay.port}"
            )
        )
        # compose.yaml's environment per service; the addresses of PostgreSQL, Redis and the
        # mounted file are this machine's, and Redis keys get this test's prefix
        local = {"DATABASE_URL": migrated_dsn, "REDIS_URL": redis_url}
        backend_env = {**base, **compose_env("backend", dotenv), "DATABASE_URL": migrated_dsn}
        files_env = {**base, **compose_env("files", dotenv)}
        gateway_env = {
            **base,
            **compose_env("gateway", dotenv),
            **local,
            "GATEWAY_CONFIG": str(config),
            "REDIS_KEY_PREFIX": f"{redis_prefix}multi{ports['gateway']}:",
        }
        assert gateway_env["BACKEND_URL"] == "https://backend:8001"  # unused with the file
        assert "INTERNAL_JWT_PRIVATE_KEY" not in files_env
        backend = _Service("backend", backend_env, ports["backend"], logdir)
        files = _Service(
            "files",
            files_env,
            ports["files"],
            logdir,
            command=[sys.executable, "-m", "examples.files"],
        )
        gateway = _Service("gateway", gateway_env, ports["gateway"], logdir)
        try:
            for service in (backend, files, gateway):
                service.start()
            for email, admin in (("alice", False), ("root", True)):
                done = _create_user(backend_env, f"{email}@multi.example.test", admin)
                assert done.returncode == 0, done.stderr
            yield Multi(gateway.url, backend.url, files.url, relay, logdir)
        finally:
            gateway.stop()
            files.stop()
            backend.stop()


def _create_user(env: dict[str, str], email: str, admin: bool) -> Any:
    args = [sys.executable, "-m", "tokengate.cli", "users", "create", "--email", email]
    args += ["--password-stdin", *(["--role", "admin"] if admin else [])]
    return subprocess.run(args, input=PASSWORD, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def alice(multi: Multi) -> dict[str, str]:
    return multi.login("alice@multi.example.test")


@pytest.fixture(scope="module")
def root(multi: Multi) -> dict[str, str]:
    return multi.login("root@multi.example.test")


def test_routes_rules_and_public_paths_across_three_processes(
    multi: Multi, alice: dict[str, str], root: dict[str, str]
) -> None:
    c = multi.client
    # public rule without a token: the anonymous scope, no roles, the gateway's id, the rule
    public = c.get("/api/v1/files/public/readme")
    assert public.status_code == 200, public.text
    assert public.json()["caller"] == {
        "sub": "tokengate-gateway",
        "scope": "anonymous_request",
        "roles": [],
        "pol": "files-public",
    }
    assert c.head("/api/v1/files/public/readme").status_code == 200
    # with a valid token: forwarded as that user; with a bad one: 401 even here
    as_alice = c.get("/api/v1/files/public/readme", headers=alice).json()["caller"]
    assert as_alice["scope"] == "user_request" and as_alice["sub"] != "tokengate-gateway"
    assert (
        c.get("/api/v1/files/public/readme", headers={"Authorization": "Bearer x"}).status_code
        == 401
    )
    # routing: /files -> files, everything else -> the backend (the identity service)
    docs = c.get("/api/v1/files/docs/readme", headers=alice)
    assert docs.status_code == 200 and docs.json()["caller"]["pol"] == "files-read"
    me = c.get("/api/v1/me", headers=alice)
    assert me.status_code == 200 and me.json()["id"] == as_alice["sub"]
    assert c.get("/api/v1/notes", headers=alice).status_code == 200
    # default deny, deny overrides allow, methods
    denied = [
        c.get("/api/v1/users", headers=alice),
        c.put("/api/v1/files/docs/new", content=b"x", headers=alice),
        c.delete("/api/v1/files/docs/readme", headers=root),
        c.post("/api/v1/files/docs/readme", headers=root),
        c.get("/api/v1/filesystem", headers=alice),
    ]
    for response in denied:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
        assert not RULE_NAMES.search(response.text + json.dumps(dict(response.headers)))
    assert c.get("/api/v1/users", headers=root).status_code == 200
    assert c.put("/api/v1/files/docs/new", content=b"hello", headers=root).status_code == 200
    assert c.get("/api/v1/files/docs/new", headers=alice).json()["content"] == "hello"
    assert c.get("/api/v1/files/docs/x").status_code == 401
    ready = c.get("/readyz").json()
    assert ready["checks"] == {"backend": True, "postgres": True, "redis": True, "files": True}


def test_a_token_captured_at_one_service_is_refused_by_the_other(
    multi: Multi, alice: dict[str, str]
) -> None:
    before = len(multi.relay.tokens)
    assert multi.client.get("/api/v1/files/docs/readme", headers=alice).status_code == 200
    captured = multi.relay.tokens[before:]
    assert len(captured) == 1
    claims = _claims(captured[0])
    # per-service audience, and the rule that let the request in
    assert (claims["aud"], claims["pol"], claims["htu"]) == (
        "tokengate-files",
        "files-read",
        "/v1/files/docs/readme",
    )
    # replayed at the backend, on the very path it was bound to: refused for its audience
    replay = httpx.get(
        multi.backend + "/v1/files/docs/readme", headers={"X-Internal-Auth": captured[0]}
    )
    assert replay.status_code == 401
    log = (multi.logdir / "backend.log").read_text()
    assert '"reason": "wrong_audience"' in log or "wrong_audience" in log
    # and at the files service itself it was single use
    again = httpx.get(
        multi.files + "/v1/files/docs/readme", headers={"X-Internal-Auth": captured[0]}
    )
    assert again.status_code == 401
