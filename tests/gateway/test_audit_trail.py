"""The audit trail through the public surface (issue 28): every event the gateway and the real
backend write, found through ``GET /api/v1/admin/audit``, ``GET /api/v1/auth/events`` and
``tokengate audit query``; paging; the admin role; no secret in any stored row; the chains verify.

Two gateway instances and the real backend app share the session database, each as its own
role (so the row-level security of the trail is exercised too).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.gateway.conftest import refresh_cookie, refresh_with
from tests.gateway.test_accounts import (
    PASSWORD,
    Accounts,
    Start,
    bearer,
    login,
)
from tests.gateway.test_accounts import accounts as accounts
from tests.gateway.test_accounts import gateways as gateways
from tokengate.audit import verify_chains

NEW_PASSWORD = "a brand new password 42"
ADMIN = "/api/v1/admin/audit"


async def _find(
    client: httpx.AsyncClient, token: str, want: dict[str, Any], *, path: str = ADMIN, **params: str
) -> dict[str, Any]:
    """The newest event matching ``want`` (a subset of its fields), waiting at most 2 s: the
    writer flushes at least every AUDIT_FLUSH_INTERVAL."""
    deadline = time.monotonic() + 2.0
    while True:
        response = await client.get(path, params={"limit": "200", **params}, headers=bearer(token))
        assert response.status_code == 200, response.text
        for item in response.json()["items"]:
            if all(item.get(k) == v for k, v in want.items()):
                return dict(item)
        assert time.monotonic() < deadline, f"no event {want} in {response.json()['items'][:5]}"
        await asyncio.sleep(0.05)


def _uid(token: str) -> str:
    from tests.gateway.test_accounts import claims

    return str(claims(token)["sub"])


async def test_every_event_is_recorded_and_found(
    accounts: Accounts, gateways: Start, migrated_dsn: str
) -> None:
    one, two = await gateways(), await gateways()
    admin_email = await accounts.create(admin=True)
    admin, _ = await login(one, admin_email)

    email = await accounts.create()
    access, cookie = await login(one, email)
    uid = _uid(access)
    found = await _find(two, admin, {"type": "login_succeeded", "subject": uid}, user=uid)
    assert found["outcome"] == "success" and found["ip"] == "203.0.113.7"
    assert found["family"] == _uid_family(access)

    # a wrong password names the account; an unknown email does not; both answer the same 401
    wrong = await one.post("/api/v1/auth/login", json={"email": email, "password": "nope-nope"})
    ghost_email = f"ghost-{uuid.uuid4().hex[:6]}@example.test"
    ghost = await one.post("/api/v1/auth/login", json={"email": ghost_email, "password": "x"})
    assert wrong.status_code == ghost.status_code == 401
    assert wrong.json() == ghost.json()
    assert "x-audit-subject" not in wrong.headers and "x-audit-reason" not in wrong.headers
    failed = await _find(one, admin, {"type": "login_failed", "subject": uid})
    assert failed["details"] == {"reason": "password"} and failed["outcome"] == "failure"
    unknown = await _find(one, admin, {"type": "login_failed", "subject": None})
    assert ghost_email not in json.dumps(unknown)

    # refresh rotated, then the old cookie again: reuse, the family revoked
    rotated = await refresh_with(one, cookie)
    assert rotated.status_code == 200
    await _find(one, admin, {"type": "refresh_rotated", "subject": uid})
    await asyncio.sleep(0)
    new_cookie = refresh_cookie(rotated)
    assert new_cookie is not None
    # the grace window answers a quick replay with the same successor (refresh_retried)
    retried = await refresh_with(one, cookie)
    assert retried.status_code == 200
    await _find(one, admin, {"type": "refresh_retried", "subject": uid})
    # past the grace window, the replay is reuse: the family is revoked
    strict = await gateways(REFRESH_GRACE_SECONDS="0")
    access_r, cookie_r = await login(strict, email)
    assert (await refresh_with(strict, cookie_r)).status_code == 200
    assert (await refresh_with(strict, cookie_r)).status_code == 401
    reused = await _find(one, admin, {"type": "refresh_reused", "family": _uid_family(access_r)})
    assert reused["outcome"] == "failure" and reused["subject"] == uid

    # logout, session revoked by the user, logout-all
    access2, cookie2 = await login(two, email)
    two.cookies.clear()
    out = await two.post("/api/v1/auth/logout", headers={"Cookie": f"__Host-tg_refresh={cookie2}"})
    assert out.status_code == 204
    await _find(one, admin, {"type": "logout", "subject": uid, "family": _uid_family(access2)})
    access3, _ = await login(two, email)
    family3 = _uid_family(access3)
    gone = await two.delete(f"/api/v1/auth/sessions/{family3}", headers=bearer(access))
    assert gone.status_code == 204
    await _find(one, admin, {"type": "session_revoked", "subject": uid, "family": family3})
    everywhere = await two.post("/api/v1/auth/logout-all", headers=bearer(access))
    assert everywhere.status_code == 204
    await _find(one, admin, {"type": "logout_all", "subject": uid})

    # password: refused, then changed (written by the backend, in the change's transaction)
    user2 = await accounts.create()
    access4, _ = await login(one, user2)
    uid2 = _uid(access4)
    bad = await one.post(
        "/api/v1/auth/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers=bearer(access4),
    )
    assert bad.status_code == 403
    await _find(one, admin, {"type": "password_change_refused", "subject": uid2})
    good = await one.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(access4),
    )
    assert good.status_code == 200, good.text
    changed = await _find(one, admin, {"type": "password_changed", "subject": uid2})
    assert changed["actor"] == uid2 and changed["service"] == "backend"
    assert changed["request_id"]  # the gateway's request id, carried to the backend
    assert changed["ip"] == "203.0.113.7"  # the client, relayed by the gateway

    # operator changes: disabled, enabled, roles changed; a refresh of a disabled account
    _, cookie5 = await login(one, user2, NEW_PASSWORD)
    await accounts.operator(lambda: accounts.store.disable(user2))
    assert (await refresh_with(one, cookie5)).status_code == 401
    await _find(one, admin, {"type": "account_disabled", "subject": uid2, "actor": "operator"})
    await _find(one, admin, {"type": "refresh_refused", "subject": uid2, "actor": "gateway"})
    disabled = await one.post("/api/v1/auth/login", json={"email": user2, "password": NEW_PASSWORD})
    assert disabled.status_code == 401
    await _find(
        one, admin, {"type": "login_failed", "subject": uid2, "details": {"reason": "disabled"}}
    )
    await accounts.store.enable(user2)
    await _find(one, admin, {"type": "account_enabled", "subject": uid2})
    await accounts.store.set_roles(user2, ("user", "admin"))
    await _find(one, admin, {"type": "roles_changed", "subject": uid2})

    # an internal token the backend refuses (straight to the backend, a forged header)
    async with httpx.AsyncClient(base_url=accounts.url) as direct:
        refused = await direct.get("/v1/me", headers={"X-Internal-Auth": "not.a.token"})
    assert refused.status_code == 401
    found = await _find(one, admin, {"type": "internal_token_refused"})
    assert found["details"]["path"] == "/v1/me" and found["details"]["reason"]

    # a user sees their own events, and only theirs
    own = await one.get("/api/v1/auth/events", headers=bearer((await login(one, email))[0]))
    assert own.status_code == 200
    assert own.json()["items"] and {i["subject"] for i in own.json()["items"]} == {uid}

    # nothing secret anywhere in the trail: passwords, tokens, cookies, the unknown address
    secrets_used = [PASSWORD, NEW_PASSWORD, "nope-nope", access, access4, cookie, ghost_email]
    conn = await asyncpg.connect(migrated_dsn)
    try:
        rows = [r[0] for r in await conn.fetch("SELECT row_to_json(e)::text FROM audit_events e")]
        reports = await verify_chains(conn)
    finally:
        await conn.close()
    assert rows
    for secret in secrets_used:
        assert not any(secret in row for row in rows), "a secret reached the audit trail"
    assert [r for r in reports if r.problem is not None] == []


def _uid_family(token: str) -> str:
    from tests.gateway.test_accounts import claims

    return str(claims(token)["sid"])


async def test_rate_limited_login_is_recorded(accounts: Accounts, gateways: Start) -> None:
    limited = await gateways(LOGIN_RATE_LIMIT_ACCOUNT="2/minute")
    admin, _ = await login(limited, await accounts.create(admin=True))
    email = await accounts.create()
    statuses = [
        (
            await limited.post("/api/v1/auth/login", json={"email": email, "password": "wrong1"})
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 429]
    found = await _find(limited, admin, {"type": "login_rate_limited", "subject": None})
    assert found["outcome"] == "failure"


async def test_non_admin_gets_403_and_bad_parameters_422(
    accounts: Accounts, gateways: Start
) -> None:
    one = await gateways()
    access, _ = await login(one, await accounts.create())
    assert (await one.get(ADMIN, headers=bearer(access))).status_code == 403
    assert (await one.get(ADMIN)).status_code == 401
    admin, _ = await login(one, await accounts.create(admin=True))
    for params in (
        {"limit": "0"},
        {"limit": "201"},
        {"user": "not-a-uuid"},
        {"outcome": "maybe"},
        {"since": "yesterday"},
        {"after": "-1"},
        {"type": "DROP TABLE"},
        {"offset": "10"},
        # found by the contract fuzzer: a Unicode digit, and an instant before year 1 in UTC
        {"limit": "\u00b2"},
        {"since": "0001-01-01T00:00:00+14:00"},
    ):
        response = await one.get(ADMIN, params=params, headers=bearer(admin))
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "validation_error"


async def test_paging_across_inserts_loses_and_repeats_nothing(
    accounts: Accounts, gateways: Start
) -> None:
    one = await gateways()
    admin, _ = await login(one, await accounts.create(admin=True))
    email = await accounts.create()
    access, _ = await login(one, email)
    uid = _uid(access)
    for _ in range(7):
        await one.post("/api/v1/auth/login", json={"email": email, "password": "wrong-pass"})
    await _find(one, admin, {"type": "login_failed", "subject": uid})
    await asyncio.sleep(0.4)  # every one of the seven flushed
    seen: list[int] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"user": uid, "limit": "3", **({"after": after} if after else {})}
        page = (await one.get(ADMIN, params=params, headers=bearer(admin))).json()
        ids = [item["id"] for item in page["items"]]
        assert ids == sorted(ids, reverse=True)  # newest first
        seen += ids
        pages += 1
        # events written between two pages are newer than the cursor: they never shift it
        await one.post("/api/v1/auth/login", json={"email": email, "password": "wrong-again"})
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 8  # 1 success + 7 failures, once each
    assert pages == 3


@pytest.mark.parametrize("flush", ["0.05"])
async def test_two_instances_keep_their_chains(
    accounts: Accounts, gateways: Start, migrated_dsn: str, flush: str
) -> None:
    one, two = (
        await gateways(AUDIT_FLUSH_INTERVAL=flush),
        await gateways(AUDIT_FLUSH_INTERVAL=flush),
    )
    email = await accounts.create()

    async def attempt(client: httpx.AsyncClient) -> None:
        await client.post("/api/v1/auth/login", json={"email": email, "password": "bad-one"})

    await asyncio.gather(*(attempt(c) for c in (one, two) for _ in range(10)))
    for client in (one, two):
        await client.app.state.audit.flush()
    conn = await asyncpg.connect(migrated_dsn)
    try:
        reports = await verify_chains(conn)
    finally:
        await conn.close()
    assert reports and all(r.problem is None for r in reports)
    # each instance its own chain, both gap-free and verified
    writers = {one.app.state.audit.writer, two.app.state.audit.writer}
    assert len(writers) == 2
    counts = {r.writer: r.events for r in reports if r.writer in writers}
    assert sum(counts.values()) >= 20 and all(n > 0 for n in counts.values())


async def test_query_limit_and_audit_off_are_settings(
    accounts: Accounts, gateways: Start, migrated_dsn: str
) -> None:
    small = await gateways(AUDIT_QUERY_MAX_LIMIT="5")
    admin, _ = await login(small, await accounts.create(admin=True))
    assert (await small.get(ADMIN, params={"limit": "5"}, headers=bearer(admin))).status_code == 200
    over = await small.get(ADMIN, params={"limit": "6"}, headers=bearer(admin))
    assert over.status_code == 422

    off = await gateways(AUDIT_ENABLED="false")
    assert off.app.state.audit is None
    email = await accounts.create()
    access, _ = await login(off, email)
    await asyncio.sleep(0.4)
    mine = await small.get(ADMIN, params={"user": _uid(access)}, headers=bearer(admin))
    assert mine.json()["items"] == []  # no login_succeeded: nothing written with auditing off


async def test_prune_drops_whole_partitions_while_logins_continue(
    accounts: Accounts, gateways: Start, migrated_dsn: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from servicekit.audit import Event, append

    from tokengate.audit import prune_partitions

    old = datetime.now(UTC) - timedelta(days=200)
    owner = await asyncpg.connect(migrated_dsn)
    try:
        async with owner.transaction():
            await append(
                owner,
                f"gateway/old-host/{uuid.uuid4().hex[:8]}",
                [Event.make("login_failed", "failure", at=old) for _ in range(50)],
            )
        one = await gateways()
        email = await accounts.create()
        stop = asyncio.Event()
        statuses: list[int] = []

        async def keep_logging_in() -> None:
            while not stop.is_set():
                response = await one.post(
                    "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
                )
                statuses.append(response.status_code)

        logins = asyncio.create_task(keep_logging_in())
        await asyncio.sleep(0.2)
        dropped = await prune_partitions(owner, timedelta(days=90))
        await asyncio.sleep(0.4)  # logins go on after the drop, and their events are written
        stop.set()
        await logins
        assert "audit_events_" + old.strftime("%Y%m") in dropped
        assert statuses and set(statuses) == {200}
        await one.app.state.audit.flush()
        reports = await verify_chains(owner)
        assert [r for r in reports if r.problem is not None] == []
    finally:
        await owner.close()


async def test_the_gateway_starts_while_postgresql_is_down(
    accounts: Accounts, gateways: Start, gateway_dsn: str
) -> None:
    """The audit trail's partitions are made at start-up when the database answers, and by the
    first batch otherwise: PostgreSQL down must not stop a start (readiness reports it)."""
    from tests.support.stack import free_port

    down = gateway_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")
    assert down != gateway_dsn
    client = await gateways(DATABASE_URL=down, DB_CONNECT_TIMEOUT="0.5")
    assert client.app.state.audit is not None
    ready = await client.get("/readyz")
    assert ready.status_code == 503
