"""GATEWAY_CONFIG through the gateway's public surface: two stand-in services on real sockets
(each verifying internal tokens for its own audience with internal_auth), the gateway app in
process, real PostgreSQL and Redis (issue 20). The same with real processes, the real backend
and the example files service: tests/e2e/test_multiservice_e2e.py."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from internal_auth import (
    HEADER,
    InternalAuthMiddleware,
    KeySet,
    PrivateKey,
    TokenScope,
    Verifier,
    get_principal,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.policy import PolicyFileError, parse_policy
from gateway.settings import Settings
from tests.support.asgi_server import serve
from tests.support.stack import free_port

GATEWAY_ID = "tokengate-gateway"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
RULE_NAMES = (
    "notes",
    "me",
    "admin-users",
    "files-read",
    "files-public",
    "files-admin-write",
    "no-file-deletes",
)


class EchoService:
    """A service behind the gateway: what its verified internal token said, and the token."""

    def __init__(self, name: str, audience: str, key: PrivateKey) -> None:
        self.name = name
        self.verifier = Verifier(KeySet([key.public_key]), issuer=GATEWAY_ID, audience=audience)
        self.app = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                # the identity service's epoch list, empty: start-up need not retry
                Route("/internal/lifecycle/epochs", self.epochs),
                Route(
                    "/v1/{rest:path}", self.echo, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]
                ),
            ],
            middleware=[
                Middleware(
                    InternalAuthMiddleware,
                    verifier=self.verifier,
                    rules=[
                        ("/v1", {TokenScope.USER_REQUEST, TokenScope.ANONYMOUS}),
                        ("/internal/lifecycle", TokenScope.REFRESH_LIFECYCLE),
                    ],
                )
            ],
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def epochs(self, request: Request) -> Response:
        return JSONResponse({"epochs": []})

    async def echo(self, request: Request) -> Response:
        who = get_principal(request)
        return JSONResponse(
            {
                "service": self.name,
                "path": request.url.path,
                "sub": who.sub,
                "scope": who.scope.value,
                "roles": list(who.roles),
                "pol": who.pol,
                "token": request.headers[HEADER],
            }
        )


class Multi:
    def __init__(self, app: Starlette, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    def auth(self, *roles: str, sub: str | None = None) -> dict[str, str]:
        token, _ = self.app.state.tokens.issue_access(
            sub=sub or str(uuid.uuid4()), sid=str(uuid.uuid4()), roles=roles or ("user",)
        )
        return {"Authorization": f"Bearer {token}"}


def config_for(text: str, ports: dict[str, int], tmp_path: Path) -> str:
    for name, port in ports.items():
        text = text.replace(
            f"http://{name}:800{1 if name == 'backend' else 2}", f"http://127.0.0.1:{port}"
        )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


@contextlib.asynccontextmanager
async def multi(
    env: dict[str, str],
    key: PrivateKey,
    tmp_path: Path,
    *,
    config: str | None = None,
    down: tuple[str, ...] = (),
    **overrides: str,
) -> AsyncIterator[Multi]:
    ports = {"backend": free_port(), "files": free_port()}
    services = {
        "backend": EchoService("backend", "tokengate-backend", key),
        "files": EchoService("files", "tokengate-files", key),
    }
    path = config_for(config or EXAMPLE.read_text(), ports, tmp_path)
    environ = {k: v for k, v in env.items() if k != "BACKEND_URL"}
    settings = Settings.from_env({**environ, "GATEWAY_CONFIG": path, **overrides})
    app = create_app(settings)
    async with contextlib.AsyncExitStack() as stack:
        for name, service in services.items():
            if name not in down:
                await stack.enter_async_context(serve(service.app, ports[name]))
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 40000)),
                base_url="https://gateway.test",
            )
        )
        yield Multi(app, client)


def assert_no_rule_name(response: httpx.Response) -> None:
    seen = response.text + json.dumps(dict(response.headers))
    for name in RULE_NAMES:
        assert f'"{name}"' not in seen and f" {name}" not in seen, (name, seen)


async def test_routes_pick_the_service_by_segment_anchored_longest_prefix(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path
) -> None:
    async with multi(env, internal_key, tmp_path) as m:
        files = await m.client.get("/api/v1/files/docs/a", headers=m.auth())
        assert (files.status_code, files.json()["service"]) == (200, "files")
        assert files.json()["path"] == "/v1/files/docs/a"
        notes = await m.client.get("/api/v1/notes/1", headers=m.auth())
        assert (notes.status_code, notes.json()["service"]) == (200, "backend")
        # "/files" is not a string prefix of "/filesystem": the catch-all (backend) gets it,
        # where no rule allows it
        other = await m.client.get("/api/v1/filesystem", headers=m.auth())
        assert other.status_code == 403
    no_catch_all = EXAMPLE.read_text().replace('prefix = "/"', 'prefix = "/notes"')
    async with multi(env, internal_key, tmp_path, config=no_catch_all) as m:
        missing = await m.client.get("/api/v1/me", headers=m.auth())
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert (await m.client.get("/api/v1/notes", headers=m.auth())).json()["service"] == (
            "backend"
        )


async def test_deny_overrides_allow_and_nothing_matching_is_403(
    env: dict[str, str],
    internal_key: PrivateKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with multi(env, internal_key, tmp_path) as m:
        admin = m.auth("user", "admin")
        assert (await m.client.put("/api/v1/files/docs/a", headers=admin)).json()["pol"] == (
            "files-admin-write"
        )
        # files-admin-write allows DELETE for admins, no-file-deletes denies it: deny wins
        with caplog.at_level(logging.INFO, logger="gateway.proxy"):
            deleted = await m.client.delete("/api/v1/files/docs/a", headers=admin)
        assert deleted.status_code == 403
        # the operator's log says which rule decided; the client is not told
        assert any(
            getattr(r, "fields", {}).get("rule") == "no-file-deletes" for r in caplog.records
        )
        assert deleted.json() == {"error": {"code": "forbidden", "message": "forbidden"}}
        assert_no_rule_name(deleted)
        # default deny: no rule for a plain user
        for method, path in (("GET", "/api/v1/users"), ("PUT", "/api/v1/files/docs/a")):
            refused = await m.client.request(method, path, headers=m.auth())
            assert refused.status_code == 403, (method, path)
            assert refused.json()["error"]["code"] == "forbidden"
            assert_no_rule_name(refused)
        assert (await m.client.get("/api/v1/users", headers=admin)).json()["pol"] == "admin-users"


async def test_public_rules_without_a_token_with_a_valid_one_and_with_a_bad_one(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path
) -> None:
    async with multi(env, internal_key, tmp_path) as m:
        anonymous = await m.client.get("/api/v1/files/public/readme")
        assert anonymous.status_code == 200, anonymous.text
        echo = anonymous.json()
        assert (echo["scope"], echo["sub"], echo["roles"], echo["pol"]) == (
            "anonymous_request",
            GATEWAY_ID,
            [],
            "files-public",
        )
        user = str(uuid.uuid4())
        as_user = await m.client.get("/api/v1/files/public/readme", headers=m.auth(sub=user))
        assert (as_user.json()["scope"], as_user.json()["sub"]) == ("user_request", user)
        for bad in ("Bearer not-a-token", "Bearer " + "e" * 40, "Basic abc"):
            refused = await m.client.get(
                "/api/v1/files/public/readme", headers={"Authorization": bad}
            )
            assert refused.status_code == 401, bad
        # anonymous anywhere else: 401 (log in), never the service
        for path in ("/api/v1/files/docs/a", "/api/v1/me", "/api/v1/files/public-leak"):
            assert (await m.client.get(path)).status_code == 401, path
        # public covers GET (and so HEAD) only
        assert (await m.client.post("/api/v1/files/public/readme")).status_code == 401


async def test_method_rules_with_head(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path
) -> None:
    async with multi(env, internal_key, tmp_path) as m:
        head = await m.client.head("/api/v1/files/docs/a", headers=m.auth())
        assert head.status_code == 200 and head.content == b""
        assert (await m.client.head("/api/v1/files/public/a")).status_code == 200
        assert (await m.client.post("/api/v1/files/docs/a", headers=m.auth())).status_code == 403
        assert (await m.client.get("/api/v1/me", headers=m.auth())).status_code == 200
        assert (await m.client.post("/api/v1/me", headers=m.auth())).status_code == 403


async def test_the_internal_token_is_for_the_service_s_audience_and_names_the_rule(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path
) -> None:
    async with multi(env, internal_key, tmp_path) as m:
        at_files = (await m.client.get("/api/v1/files/docs/a", headers=m.auth())).json()
        at_backend = (await m.client.get("/api/v1/me", headers=m.auth())).json()
    assert (at_files["pol"], at_backend["pol"]) == ("files-read", "me")
    files = EchoService("files", "tokengate-files", internal_key)
    backend = EchoService("backend", "tokengate-backend", internal_key)
    from internal_auth import InternalAuthError, Reason

    for service, token, path in (
        (files, at_backend["token"], "/v1/me"),
        (backend, at_files["token"], "/v1/files/docs/a"),
    ):
        with pytest.raises(InternalAuthError) as refused:
            service.verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu=path)
        assert refused.value.reason is Reason.WRONG_AUDIENCE


async def test_anonymous_requests_are_limited_per_client_ip(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path
) -> None:
    async with multi(env, internal_key, tmp_path, PROXY_RATE_LIMIT_IP="3/minute") as m:
        codes = [(await m.client.get("/api/v1/files/public/a")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        # a logged-in caller is not counted against the address
        assert (await m.client.get("/api/v1/files/public/a", headers=m.auth())).status_code == 200
    async with multi(env, internal_key, tmp_path, PROXY_RATE_LIMIT_IP="") as m:
        codes = [(await m.client.get("/api/v1/files/public/a")).status_code for _ in range(5)]
        assert codes == [200] * 5


async def test_readiness_lists_other_services_without_failing_on_them(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path
) -> None:
    async with multi(env, internal_key, tmp_path, down=("files",)) as m:
        ready = await m.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {
            "backend": True,
            "postgres": True,
            "redis": True,
            "files": "unreachable",  # true, or why not, as every check
        }
        down = await m.client.get("/api/v1/files/docs/a", headers=m.auth())
        assert down.status_code == 502


def test_settings_take_the_identity_service_from_the_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(EXAMPLE.read_text().replace('identity = "backend"', 'identity = "files"'))
    environ: dict[str, Any] = {k: v for k, v in env.items() if k != "BACKEND_URL"}
    settings = Settings.from_env({**environ, "GATEWAY_CONFIG": str(path)})
    assert (settings.backend_url, settings.backend_id) == ("http://files:8002", "tokengate-files")
    assert settings.proxy_rate_limit_ip == "120/minute"
    # without the file, BACKEND_URL is still required
    with pytest.raises(Exception, match="BACKEND_URL"):
        Settings.from_env(environ)


async def test_the_ip_limit_fails_closed_and_the_user_limit_open_without_redis() -> None:
    from servicekit import redis_url

    from gateway.errors import ServiceUnavailable
    from gateway.proxy.user_limit import UserLimit

    dead = redis_url.parse("redis://127.0.0.1:1/0")
    ip = UserLimit(
        redis=dead,
        key_prefix="t:",
        rate="5/minute",
        namespace="proxy-ip",
        limit="ip",
        fail_open=False,
    )
    with pytest.raises(ServiceUnavailable) as refused:
        await ip.check("203.0.113.9")
    assert refused.value.headers["Retry-After"]
    await UserLimit(redis=dead, key_prefix="t:", rate="5/minute").check(
        "some-user"
    )  # per user: let through, logged


async def test_every_deny_is_an_audit_event_naming_its_rule(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path, migrated_dsn: str
) -> None:
    """Issue 28: a deny of the route table is recorded (subject, service, rule) in the audit
    trail; the client still learns nothing of the rule. Allows are not recorded."""
    import asyncpg
    from servicekit.audit import query, row_json

    sub = str(uuid.uuid4())
    async with multi(env, internal_key, tmp_path) as m:
        admin = m.auth("user", "admin", sub=sub)
        denied = await m.client.delete("/api/v1/files/docs/a", headers=admin)
        assert denied.status_code == 403
        assert_no_rule_name(denied)
        allowed = await m.client.put("/api/v1/files/docs/a", headers=admin)
        assert allowed.status_code == 200
        anonymous = await m.client.get("/api/v1/users")
        assert anonymous.status_code == 401
        await m.app.state.audit.flush()
    conn = await asyncpg.connect(migrated_dsn)
    try:
        mine = [row_json(r) for r in await query(conn, limit=10, subject=sub)]
    finally:
        await conn.close()
    assert [(e["type"], e["outcome"], e["service"], e["rule"]) for e in mine] == [
        ("policy_denied", "failure", "files", "no-file-deletes")
    ]
    assert mine[0]["details"] == {"method": "DELETE", "path": "/v1/files/docs/a"}


async def test_a_service_that_opts_in_is_probed_with_a_signed_token(
    env: dict[str, str], internal_key: PrivateKey, tmp_path: Path
) -> None:
    """``probe = true``: /readyz shows whether the service verifies a probe for its audience
    (its internal_auth answers it), not only that /healthz answers; it never fails readiness."""
    files_table = '[services.files]\nurl = "http://files:8002"\naudience = "tokengate-files"\n'
    assert files_table in EXAMPLE.read_text()
    opted_in = EXAMPLE.read_text().replace(files_table, files_table + "probe = true\n")
    async with multi(env, internal_key, tmp_path, config=opted_in) as m:
        ready = await m.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["files"] is True
    # the gateway believes the service's audience is another: /healthz would say true
    wrong = opted_in.replace('audience = "tokengate-files"', 'audience = "tokengate-else"')
    async with multi(env, internal_key, tmp_path, config=wrong) as m:
        ready = await m.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["files"] == "internal token refused: wrong_audience"


def test_probe_must_be_a_boolean(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        'audience = "tokengate-files"\n', 'audience = "tokengate-files"\nprobe = "yes"\n'
    )
    with pytest.raises(PolicyFileError) as failed:
        parse_policy(text.encode())
    assert any(
        'services.files.probe "yes" must be true or false' in p for p in failed.value.problems
    )
