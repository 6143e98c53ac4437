"""Issue 9 end to end: ``tokengate users ...`` on the command line against a backend and two
(then three) gateway processes sharing PostgreSQL and Redis.

Each process runs under its own least-privilege database role: the backend and the command line
as ``tokengate_backend`` (no superuser, no access to the refresh ledger), the gateways as
``tokengate_gateway`` (no access to ``users``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import as_role
from tests.support.redis_keys import forget_prefix
from tests.support.stack import Stack, running_stack

ORIGIN = "http://localhost:5173"
PASSWORD = "e2e account password"
NEW_PASSWORD = "e2e account password, changed"
RELOAD = 2  # EPOCH_RELOAD_INTERVAL of these gateways: the bound when no broadcast arrives


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        backend_env={"DATABASE_URL": as_role(migrated_dsn, "tokengate_backend")},
        gateway_env={
            "DATABASE_URL": as_role(migrated_dsn, "tokengate_gateway"),
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
            "EPOCH_RELOAD_INTERVAL": str(RELOAD),
        },
    ) as running:
        yield running


def users(stack: Stack, *args: str, stdin: str = "", redis: bool = True) -> str:
    """``tokengate users ...`` as an operator runs it: the backend's environment (its own
    database role) plus the gateways' REDIS_URL and REDIS_KEY_PREFIX for the broadcast."""
    env = dict(stack.backend_env)
    if redis:
        env["REDIS_URL"] = stack.gateway_env["REDIS_URL"]
        env["REDIS_KEY_PREFIX"] = stack.gateway_env["REDIS_KEY_PREFIX"]
    done = subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "users", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def new_user(stack: Stack, *, admin: bool = False) -> str:
    email = f"acct-e2e-{uuid.uuid4().hex[:10]}@example.test"
    stack.create_user(email, PASSWORD, admin=admin)
    return email


def login(url: str, email: str, password: str = PASSWORD) -> tuple[str, str]:
    r = httpx.post(
        url + "/api/v1/auth/login",
        json={"email": email, "password": password},
        headers={"Origin": ORIGIN},
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"], r.cookies["tg_refresh"]


def login_status(url: str, email: str, password: str = PASSWORD) -> int:
    r = httpx.post(
        url + "/api/v1/auth/login",
        json={"email": email, "password": password},
        headers={"Origin": ORIGIN},
    )
    return r.status_code


def refresh(url: str, token: str) -> httpx.Response:
    return httpx.post(
        url + "/api/v1/auth/refresh",
        headers={"Origin": ORIGIN, "Cookie": f"tg_refresh={token}"},
    )


def call(url: str, access: str, method: str = "GET", path: str = "/api/v1/notes") -> int:
    kwargs: dict[str, Any] = {"json": {"title": "e2e"}} if method == "POST" else {}
    r = httpx.request(method, url + path, headers={"Authorization": f"Bearer {access}"}, **kwargs)
    return r.status_code


def seconds_until(url: str, access: str, status: int, path: str, bound: float) -> float:
    started = time.monotonic()
    while True:
        got = call(url, access, path=path)
        elapsed = time.monotonic() - started
        if got == status:
            return elapsed
        assert elapsed < bound, f"{path} still {got} after {elapsed:.2f} s"
        time.sleep(0.02)


def cleared(response: httpx.Response) -> bool:
    return any(
        h.startswith("tg_refresh=") and ("Max-Age=0" in h or 'tg_refresh=""' in h)
        for h in response.headers.get_list("set-cookie")
    )


def test_disable_and_enable_across_gateway_processes_and_a_redis_flush(stack: Stack) -> None:
    one = stack.gateway_url
    email = new_user(stack)
    access, token = login(one, email)
    with stack.extra_gateway() as two:
        assert call(two, access) == 200
        assert call(two, access, "POST") == 201

        audit = users(stack, "disable", "--email", email.upper())
        # the operator's change is audited as a structured line, never with the password
        line = next(json.loads(x) for x in audit.splitlines() if "account_changed" in x)
        assert line["event"] == "account_changed" and line["action"] == "disabled"
        assert line["actor"] == "operator" and line["user_id"]
        # every instance refuses the access token within a second: reads and writes
        assert seconds_until(two, access, 401, "/api/v1/notes", 1.0) < 1.0
        assert call(two, access, "POST") == 401
        assert call(one, access) == 401
        refused = refresh(one, token)
        assert refused.status_code == 401 and cleared(refused)
        assert login_status(two, email) == 401

    # Redis loses everything of this stack; a gateway started now still knows (the backend's
    # epochs and the ledger are the durable truth)
    asyncio.run(
        forget_prefix(stack.gateway_env["REDIS_URL"], stack.gateway_env["REDIS_KEY_PREFIX"])
    )
    with stack.extra_gateway() as three:
        assert call(three, access) == 401
        assert call(three, access, "POST") == 401
        assert refresh(three, token).status_code == 401
        assert login_status(three, email) == 401

        users(stack, "enable", "--email", email)
        new_access, new_token = login(three, email)
        assert call(three, new_access, "POST") == 201
        assert refresh(one, new_token).status_code == 200
        # re-enabling revived nothing
        assert refresh(three, token).status_code == 401
        assert call(three, access) == 401


def test_set_roles_demotes_live_tokens_and_the_next_refresh(stack: Stack) -> None:
    email = new_user(stack, admin=True)
    access, token = login(stack.gateway_url, email)
    with stack.extra_gateway() as two:
        assert call(two, access, path="/api/v1/users") == 200
        users(stack, "set-roles", "--email", email, "--role", "user")
        assert seconds_until(two, access, 401, "/api/v1/users", 1.0) < 1.0
        renewed = refresh(two, token)
        assert renewed.status_code == 200
        new_access = renewed.json()["access_token"]
        assert call(stack.gateway_url, new_access, path="/api/v1/users") == 403
        assert call(stack.gateway_url, new_access) == 200


def test_set_password_ends_every_session(stack: Stack) -> None:
    email = new_user(stack)
    access, token = login(stack.gateway_url, email)
    users(stack, "set-password", "--email", email, "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert seconds_until(stack.gateway_url, access, 401, "/api/v1/notes", 1.0) < 1.0
    assert refresh(stack.gateway_url, token).status_code == 401
    assert login_status(stack.gateway_url, email) == 401
    login(stack.gateway_url, email, NEW_PASSWORD)


def test_without_redis_the_command_warns_and_the_durable_epoch_still_holds(stack: Stack) -> None:
    email = new_user(stack)
    access, token = login(stack.gateway_url, email)
    warning = users(stack, "end-sessions", "--email", email, redis=False)
    assert "REDIS_URL is not set" in warning
    # every refresh obeys at once (the epoch is in PostgreSQL) ...
    assert refresh(stack.gateway_url, token).status_code == 401
    # ... and live access tokens at the gateways' next epoch reload instead of within 1 s
    assert (
        seconds_until(stack.gateway_url, access, 401, "/api/v1/notes", RELOAD + 1.5) < RELOAD + 1.5
    )


def test_backend_down_during_refresh_is_503_and_the_token_survives(stack: Stack) -> None:
    email = new_user(stack)
    _, token = login(stack.gateway_url, email)
    stack.stop_backend()
    try:
        failed = refresh(stack.gateway_url, token)
    finally:
        stack.start_backend()
    assert failed.status_code == 503
    assert failed.headers["retry-after"].isdigit()
    assert not cleared(failed)
    again = refresh(stack.gateway_url, token)
    assert again.status_code == 200, again.text
