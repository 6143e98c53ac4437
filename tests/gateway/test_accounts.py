"""Accounts and sessions move together (issue 9), through the gateway's HTTP API.

Two gateway instances share the session's PostgreSQL and a Redis prefix, in front of the *real*
backend app (served by uvicorn on a real socket in this process, as the ``tokengate_backend``
role) so status, roles, epochs and passwords come from the real ``users`` table. Operator
changes are made exactly as ``tokengate users ...`` makes them (the store's update, then
:func:`backend.broadcast.publish`); the command line itself runs end to end in
``tests/e2e/test_accounts_e2e.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from internal_auth import KeySet, PrivateKey
from servicekit.epochs import EpochUpdate
from starlette.applications import Starlette

from backend import broadcast
from backend.app import create_app as create_backend
from backend.passwords import Passwords
from backend.users import User, UserStore
from gateway.app import create_app
from gateway.sessions.epochs import UserEpochs
from gateway.sessions.ledger import Ledger, Outcome
from gateway.settings import Settings
from tests.backend.conftest import FAST_ARGON2, make_settings
from tests.gateway.conftest import (
    BASE_URL,
    ORIGIN,
    GatewayClient,
    as_role,
    refresh_cookie,
    refresh_with,
)
from tests.support.asgi_server import serve
from tests.support.redis_keys import forget_prefix
from tests.support.stack import free_port

PASSWORD = "an account password"
NEW_PASSWORD = "another account password"
LONG_S = "\u017f"


class Switch(httpx.AsyncBaseTransport):
    """The network between gateway and backend, which a test can cut (the backend process is
    down or unreachable); everything behind it is the real backend."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.down = False
        #: runs after the backend answered and before the gateway reads the answer (a slow
        #: network: the answer describes the account as it was when the backend read it)
        self.delay_answer: Callable[[httpx.Request], Awaitable[None]] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("backend unreachable", request=request)
        response = await self._inner.handle_async_request(request)
        if self.delay_answer is not None:
            await self.delay_answer(request)
        return response

    async def aclose(self) -> None:
        """Every gateway instance closes its client, and with it this shared transport: the
        connections are closed once, by the fixture, after the last gateway has stopped."""

    async def close_connections(self) -> None:
        await self._inner.aclose()


class Accounts:
    """The backend side: its app, its store, and the operator's changes."""

    def __init__(self, app: Starlette, environ: dict[str, str], url: str) -> None:
        self.app = app
        self.store: UserStore = app.state.users
        self.transport = Switch()
        self.url = url
        self._environ = environ

    async def create(self, email: str | None = None, *, admin: bool = False) -> str:
        email = email or f"acct-{secrets.token_hex(4)}@example.test"
        roles = ("user", "admin") if admin else ("user",)
        await self.store.create(email, await Passwords(FAST_ARGON2).hash(PASSWORD), roles)
        return email

    async def operator(self, change: Callable[[], Awaitable[User | None]]) -> User:
        """What ``tokengate users ...`` does: the change, then the broadcast."""
        user = await change()
        assert user is not None
        assert await broadcast.publish(self._environ, user) is None
        return user


@pytest.fixture
async def accounts(
    migrated_dsn: str, internal_key: PrivateKey, env: dict[str, str]
) -> AsyncIterator[Accounts]:
    settings = make_settings(
        as_role(migrated_dsn, "tokengate_backend"), KeySet([internal_key.public_key])
    )
    app = create_backend(settings, passwords=Passwords(FAST_ARGON2))
    port = free_port()
    async with serve(app, port):
        accounts = Accounts(app, env, f"http://127.0.0.1:{port}")
        try:
            yield accounts
        finally:
            await accounts.transport.close_connections()


Start = Callable[..., Any]


@pytest.fixture
async def gateways(env: dict[str, str], accounts: Accounts) -> AsyncIterator[Start]:
    """``await start(**overrides)``: one more gateway instance on the shared prefix."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: str) -> GatewayClient:
            settings = Settings.from_env({**env, "BACKEND_URL": accounts.url, **overrides})
            app = create_app(settings, backend_transport=accounts.transport)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = GatewayClient(
                transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 40000)),
                base_url=BASE_URL,
                headers={"Origin": ORIGIN},
            )
            await stack.enter_async_context(client)
            client.app = app
            return client

        yield start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> tuple[str, str]:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    cookie = refresh_cookie(response)
    assert cookie is not None
    return response.json()["access_token"], cookie


async def seconds_until(
    client: httpx.AsyncClient, token: str, status: int, path: str = "/api/v1/notes"
) -> float:
    """How long until ``path`` answers ``status`` with this access token (fails after 1 s)."""
    started = time.monotonic()
    while True:
        response = await client.get(path, headers=bearer(token))
        elapsed = time.monotonic() - started
        if response.status_code == status:
            return elapsed
        assert elapsed < 1.0, f"{path} still {response.status_code} after {elapsed:.2f} s"
        await asyncio.sleep(0.01)


def cleared(response: httpx.Response) -> bool:
    return any(
        h.startswith("tg_refresh=;") or "Max-Age=0" in h
        for h in response.headers.get_list("set-cookie")
    )


# -- disable ------------------------------------------------------------------------------------


async def test_disable_ends_every_session_on_every_instance_and_enable_allows_new_ones(
    accounts: Accounts, gateways: Start
) -> None:
    one, two = await gateways(), await gateways()
    email = await accounts.create()
    access, refresh = await login(one, email)
    note = await two.post("/api/v1/notes", json={"title": "t"}, headers=bearer(access))
    assert note.status_code == 201

    await accounts.operator(lambda: accounts.store.disable(email))
    # the other instance refuses the access token within a second, reads and writes alike
    assert await seconds_until(two, access, 401) < 1.0
    write = await two.post("/api/v1/notes", json={"title": "t"}, headers=bearer(access))
    assert write.status_code == 401
    assert (await one.get("/api/v1/notes", headers=bearer(access))).status_code == 401
    # the refresh token is dead and its cookie cleared; login gives the generic 401
    refused = await refresh_with(one, refresh)
    assert refused.status_code == 401 and cleared(refused)
    failed = await one.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert failed.status_code == 401
    assert failed.json()["error"]["code"] == "invalid_credentials"

    await accounts.store.enable(email)
    new_access, new_refresh = await login(two, email)
    assert (await one.get("/api/v1/notes", headers=bearer(new_access))).status_code == 200
    assert (await refresh_with(one, new_refresh)).status_code == 200
    # re-enabling revives nothing
    assert (await refresh_with(two, refresh)).status_code == 401
    assert (await two.get("/api/v1/notes", headers=bearer(access))).status_code == 401


async def test_after_redis_is_flushed_a_new_instance_still_knows(
    accounts: Accounts, gateways: Start, env: dict[str, str], redis_url: str
) -> None:
    one = await gateways()
    email = await accounts.create()
    access, refresh = await login(one, email)
    await accounts.operator(lambda: accounts.store.disable(email))

    # Redis loses everything this stack had (only this test's prefix: the server is shared)
    await forget_prefix(redis_url, env["REDIS_KEY_PREFIX"])

    fresh = await gateways()
    assert (await fresh.get("/api/v1/notes", headers=bearer(access))).status_code == 401
    assert (
        await fresh.post("/api/v1/notes", json={"title": "t"}, headers=bearer(access))
    ).status_code == 401
    assert (await refresh_with(fresh, refresh)).status_code == 401
    failed = await fresh.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert failed.status_code == 401

    await accounts.store.enable(email)
    new_access, _ = await login(fresh, email)
    assert (await fresh.get("/api/v1/notes", headers=bearer(new_access))).status_code == 200
    assert (await refresh_with(fresh, refresh)).status_code == 401
    assert (await fresh.get("/api/v1/notes", headers=bearer(access))).status_code == 401


async def test_a_token_minted_just_after_a_change_survives_it(
    accounts: Accounts, gateways: Start
) -> None:
    """Both sides of the boundary, back to back (usually within one second of the change)."""
    gw = await gateways()
    email = await accounts.create()
    before, before_refresh = await login(gw, email)
    changed = await accounts.operator(lambda: accounts.store.end_sessions(email))
    started = time.monotonic()
    after, after_refresh = await login(gw, email)  # waits out the epoch's second if needed
    assert time.monotonic() - started < 2.0
    assert claims(before)["iat"] < changed.token_epoch <= claims(after)["iat"]
    assert (await gw.get("/api/v1/notes", headers=bearer(before))).status_code == 401
    assert (await gw.get("/api/v1/notes", headers=bearer(after))).status_code == 200
    # the ended session is not listed as live, although nothing has tried to refresh it yet
    listed = await gw.get("/api/v1/auth/sessions", headers=bearer(after))
    assert [s["id"] for s in listed.json()["sessions"]] == [claims(after)["sid"]]
    assert (await refresh_with(gw, before_refresh)).status_code == 401
    assert (await refresh_with(gw, after_refresh)).status_code == 200


async def test_ledger_and_epochs_compare_at_the_boundary(gateway_dsn: str) -> None:
    import asyncpg

    epoch = int(time.time()) + 100
    epochs = UserEpochs(access_ttl=600, reload_interval=30)
    epochs.apply(EpochUpdate("u", epoch, epoch))
    assert epochs.token_denied("u", epoch - 1)
    assert not epochs.token_denied("u", epoch)
    epochs.apply(EpochUpdate("u", epoch - 50, epoch - 50))  # never moves back
    assert epochs.token_denied("u", epoch - 1)

    pool = await asyncpg.create_pool(gateway_dsn, min_size=1, max_size=2)
    try:
        ledger = Ledger(pool, refresh_ttl=3600, family_lifetime=7200, grace_seconds=0)
        user = "00000000-0000-4000-8000-" + secrets.token_hex(6)
        just_before = await ledger.create_family(
            user_id=user, roles=["user"], user_agent=None, ip=None, now=epoch - 1
        )
        at_epoch = await ledger.create_family(
            user_id=user, roles=["user"], user_agent=None, ip=None, now=epoch
        )
        # the list already leaves out the family the epoch ended, before any refresh revokes it
        listed = await ledger.list_sessions(user, now=epoch + 1, sessions_valid_from=epoch)
        assert [s.id for s in listed] == [at_epoch.sid]
        everything = await ledger.list_sessions(user, now=epoch + 1)
        assert {s.id for s in everything} == {at_epoch.sid, just_before.sid}
        ended = await ledger.rotate(
            just_before.as_claims(), now=epoch + 1, sessions_valid_from=epoch
        )
        assert ended.outcome is Outcome.SESSIONS_ENDED
        # for good: the family is revoked, whatever epoch a later call passes
        again = await ledger.rotate(just_before.as_claims(), now=epoch + 2, sessions_valid_from=0)
        assert again.outcome is Outcome.FAMILY_REVOKED
        kept = await ledger.rotate(at_epoch.as_claims(), now=epoch + 1, sessions_valid_from=epoch)
        assert kept.outcome is Outcome.ROTATED
    finally:
        await pool.close()


async def _refresh_alone(app: Starlette, token: str) -> httpx.Response:
    """One refresh on its own client: no cookie jar shared with the requests racing it."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE_URL, headers={"Origin": ORIGIN}
    ) as client:
        return await refresh_with(client, token)


async def test_refreshes_racing_a_disable_leave_nothing_alive(
    accounts: Accounts, gateways: Start
) -> None:
    """Forty refreshes of five sessions run while the account is disabled: whichever of them
    got in before the change, nothing any of them handed out works once it has returned."""
    one, two = await gateways(), await gateways()
    email = await accounts.create()
    tokens = [(await login(one, email))[1] for _ in range(5)]

    async def disable_soon() -> User:
        await asyncio.sleep(0.05)
        return await accounts.operator(lambda: accounts.store.disable(email))

    # Start just before a second boundary, so refreshes that checked the account before the
    # change and mint after it straddle the epoch (the race the check time closes).
    await asyncio.sleep((0.9 - time.time() % 1) % 1)

    refreshes = asyncio.gather(
        *(_refresh_alone((one, two)[i % 2].app, t) for i, t in enumerate(tokens * 8))
    )
    answers, _ = await asyncio.gather(refreshes, disable_soon())
    assert {a.status_code for a in answers} <= {200, 401}
    handed_out = [a for a in answers if a.status_code == 200]
    for answer in handed_out:
        assert await seconds_until(two, answer.json()["access_token"], 401) < 1.0
        successor = refresh_cookie(answer)
        assert successor is not None
        assert (await refresh_with(one, successor)).status_code == 401
    for token in tokens:
        assert (await refresh_with(two, token)).status_code == 401


async def test_a_refresh_checked_before_a_change_but_minted_after_it_dies_with_it(
    accounts: Accounts, gateways: Start
) -> None:
    """Deterministic form of the race above: the backend reads the account, then the account
    is disabled and the epoch's second passes, and only then does the gateway get the (stale)
    answer and mint. The token is dated from the check, so it is older than the epoch."""
    gw = await gateways()
    email = await accounts.create()
    _, token = await login(gw, email)
    changed: list[User] = []

    async def change_meanwhile(request: httpx.Request) -> None:
        if request.url.path.startswith("/internal/lifecycle/users/") and not changed:
            changed.append(await accounts.operator(lambda: accounts.store.disable(email)))
            await asyncio.sleep(max(0.0, changed[0].token_epoch - time.time()) + 0.05)

    accounts.transport.delay_answer = change_meanwhile
    try:
        answer = await refresh_with(gw, token)
    finally:
        accounts.transport.delay_answer = None
    # the answer said "active": the rotation went through, minted after the epoch had passed
    assert answer.status_code == 200
    access = answer.json()["access_token"]
    assert time.time() >= changed[0].token_epoch
    assert claims(access)["iat"] < changed[0].token_epoch
    assert await seconds_until(gw, access, 401) < 1.0
    assert (await refresh_with(gw, refresh_cookie(answer) or "")).status_code == 401


# -- roles --------------------------------------------------------------------------------------


async def test_demoted_admin_loses_admin_routes_within_a_second_and_at_refresh(
    accounts: Accounts, gateways: Start
) -> None:
    one, two = await gateways(), await gateways()
    email = await accounts.create(admin=True)
    access, refresh = await login(one, email)
    assert claims(access)["roles"] == ["user", "admin"]
    assert (await two.get("/api/v1/users", headers=bearer(access))).status_code == 200

    await accounts.operator(lambda: accounts.store.set_roles(email, ("user",)))
    assert await seconds_until(two, access, 401, "/api/v1/users") < 1.0

    # the family lives on; the next token carries the roles of now, not those of login
    renewed = await refresh_with(two, refresh)
    assert renewed.status_code == 200
    new_access = renewed.json()["access_token"]
    assert claims(new_access)["roles"] == ["user"]
    assert (await one.get("/api/v1/users", headers=bearer(new_access))).status_code == 403
    assert (await one.get("/api/v1/notes", headers=bearer(new_access))).status_code == 200


async def test_promotion_reaches_the_next_refresh(accounts: Accounts, gateways: Start) -> None:
    gw = await gateways()
    email = await accounts.create()
    _, refresh = await login(gw, email)
    await accounts.store.set_roles(email, ("user", "admin"))  # no broadcast needed for this
    renewed = await refresh_with(gw, refresh)
    assert sorted(claims(renewed.json()["access_token"])["roles"]) == ["admin", "user"]


# -- password change ----------------------------------------------------------------------------


async def _change_password(
    client: httpx.AsyncClient,
    access: str,
    current: str,
    new: str = NEW_PASSWORD,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/password",
        json={"current_password": current, "new_password": new},
        headers={**bearer(access), **(headers or {})},
    )


async def test_password_change_keeps_the_callers_session_and_ends_the_others(
    accounts: Accounts, gateways: Start
) -> None:
    one, two = await gateways(), await gateways()
    email = await accounts.create()
    mine, my_refresh = await login(one, email)
    theirs, their_refresh = await login(two, email)

    changed = await _change_password(one, mine, PASSWORD)
    assert changed.status_code == 200, changed.text
    assert changed.headers["cache-control"] == "no-store"
    new_access = changed.json()["access_token"]
    new_refresh = refresh_cookie(changed)
    assert new_refresh is not None

    # the other session: access refused on the other instance within a second, refresh dead
    assert await seconds_until(two, theirs, 401) < 1.0
    assert (await refresh_with(two, their_refresh)).status_code == 401
    # the caller carries on with what the change returned
    assert (await one.get("/api/v1/notes", headers=bearer(new_access))).status_code == 200
    assert (
        await two.post("/api/v1/notes", json={"title": "t"}, headers=bearer(new_access))
    ).status_code == 201
    renewed = await refresh_with(two, new_refresh)
    assert renewed.status_code == 200
    listed = await one.get("/api/v1/auth/sessions", headers=bearer(renewed.json()["access_token"]))
    assert [s["current"] for s in listed.json()["sessions"]] == [True]
    # the caller's pre-change tokens are replaced, not kept alongside
    assert (await refresh_with(one, my_refresh)).status_code == 401
    # the old password no longer logs in; the new one does
    old = await one.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert old.status_code == 401
    await login(two, email, NEW_PASSWORD)


async def test_wrong_current_password_is_a_bare_403_and_rate_limited(
    accounts: Accounts, gateways: Start
) -> None:
    gw = await gateways(LOGIN_RATE_LIMIT_ACCOUNT="3/minute")
    email = await accounts.create()
    access, refresh = await login(gw, email)  # a success: counts nothing
    for _ in range(3):  # 1 to 3 of 3
        wrong = await _change_password(gw, access, "a wrong guess at it")
        assert wrong.status_code == 403
        assert wrong.json() == {"error": {"code": "forbidden", "message": "forbidden"}}
        assert "www-authenticate" not in wrong.headers
    limited = await _change_password(gw, access, PASSWORD)
    assert limited.status_code == 429 and "retry-after" in limited.headers
    # one bucket with login: the account's logins are limited too, whatever the spelling
    spelled = email.upper().replace("S", LONG_S)
    blocked = await gw.post("/api/v1/auth/login", json={"email": spelled, "password": PASSWORD})
    assert blocked.status_code == 429
    # and nothing changed: the session lives, the password is the old one
    assert (await gw.get("/api/v1/notes", headers=bearer(access))).status_code == 200
    assert (await refresh_with(gw, refresh)).status_code == 200


async def test_password_changes_that_succeed_count_nothing(
    accounts: Accounts, gateways: Start
) -> None:
    """Issue 24, item 11: only refused passwords count against the account's login limit."""
    gw = await gateways(LOGIN_RATE_LIMIT_ACCOUNT="2/minute")
    email = await accounts.create()
    access, _ = await login(gw, email)
    current = PASSWORD
    for n in range(3):
        new = f"{NEW_PASSWORD} {n}"
        changed = await _change_password(gw, access, current, new)
        assert changed.status_code == 200, changed.text
        access, current = changed.json()["access_token"], new
    # the account still has both of its attempts
    assert (await _change_password(gw, access, "wrong one")).status_code == 403
    assert (
        await gw.post("/api/v1/auth/login", json={"email": email, "password": current})
    ).status_code == 200
    assert (
        await gw.post("/api/v1/auth/login", json={"email": email, "password": "no"})
    ).status_code == 401
    blocked = await gw.post("/api/v1/auth/login", json={"email": email, "password": current})
    assert blocked.status_code == 429 and "retry-after" in blocked.headers


async def test_password_change_input_and_origin(accounts: Accounts, gateways: Start) -> None:
    gw = await gateways()
    email = await accounts.create()
    access, _ = await login(gw, email)
    assert (await _change_password(gw, access, PASSWORD, "short")).status_code == 422
    evil = await _change_password(gw, access, PASSWORD, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    json_type = {"Content-Type": "application/json"}
    bad = await gw.post(
        "/api/v1/auth/password", content=b"{not json", headers={**bearer(access), **json_type}
    )
    assert bad.status_code == 400
    form = await gw.post(
        "/api/v1/auth/password", content=b"current_password=x", headers=bearer(access)
    )
    assert form.status_code == 415
    extra = await gw.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "x": 1},
        headers=bearer(access),
    )
    assert extra.status_code == 422
    assert (
        await gw.post("/api/v1/auth/password", json={"current_password": PASSWORD})
    ).status_code == 401
    # a non-browser client sends no Origin at all: allowed
    gw.headers.pop("Origin")
    assert (await _change_password(gw, access, PASSWORD)).status_code == 200


# -- one email normal form ----------------------------------------------------------------------


def _spellings(email: str) -> list[str]:
    local, _, domain = email.partition("@")
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in local)
    return [
        email.upper(),
        email.replace("s", LONG_S),
        f"{fullwidth}@{domain}",
        f"  {email}\t",
    ]


async def test_email_spellings_are_one_account_and_one_login_bucket(
    accounts: Accounts, gateways: Start
) -> None:
    gw = await gateways(LOGIN_RATE_LIMIT_ACCOUNT="4/minute")
    email = await accounts.create(f"sam-{secrets.token_hex(3)}@example.test")
    ids = set()
    for spelling in _spellings(email):
        response = await gw.post(
            "/api/v1/auth/login", json={"email": spelling, "password": PASSWORD}
        )
        assert response.status_code == 200, (spelling, response.text)
        ids.add(response.json()["user"]["id"])
    assert len(ids) == 1
    # successes count nothing; four failures under four spellings use up one bucket, so a
    # fifth spelling gets no fresh allowance
    for spelling in _spellings(email):
        wrong = await gw.post("/api/v1/auth/login", json={"email": spelling, "password": "no!"})
        assert wrong.status_code == 401
    again = await gw.post("/api/v1/auth/login", json={"email": email.title(), "password": PASSWORD})
    assert again.status_code == 429


async def test_a_second_account_under_another_spelling_is_refused(accounts: Accounts) -> None:
    email = await accounts.create(f"sam-{secrets.token_hex(3)}@example.test")
    from backend.errors import Conflict

    for spelling in _spellings(email):
        with pytest.raises(Conflict):
            await accounts.create(spelling)


# -- the lifecycle call at refresh ----------------------------------------------------------------


async def test_backend_down_during_refresh_is_503_and_burns_nothing(
    accounts: Accounts, gateways: Start
) -> None:
    gw = await gateways()
    email = await accounts.create()
    _, refresh = await login(gw, email)
    accounts.transport.down = True
    try:
        failed = await refresh_with(gw, refresh)
    finally:
        accounts.transport.down = False
    assert failed.status_code == 503
    assert failed.headers["retry-after"].isdigit()
    assert not cleared(failed)
    # the same token works afterwards: a first use, not a "reuse"
    retried = await refresh_with(gw, refresh)
    assert retried.status_code == 200
    assert (await refresh_with(gw, refresh_cookie(retried) or "")).status_code == 200
