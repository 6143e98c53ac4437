"""``tokengate_client.DPoPAuth`` against the real stack (gateway and backend processes, real
PostgreSQL and Redis): login, signed requests, nonce retries, refresh before expiry and after a
401, logout, revocations that stay revoked, and the README example run as written."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from tokengate_client import AuthenticationError, DPoPAuth, DPoPKey

from tests.support.stack import Stack, dpop_stack, free_port

pytestmark = pytest.mark.e2e

PASSWORD = "client correct horse battery staple"
ROOT = Path(__file__).resolve().parents[2]
JWT_RE = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with dpop_stack(
        database_url=migrated_dsn, redis_url=redis_url, redis_prefix=redis_prefix
    ) as running:
        yield running


@pytest.fixture(scope="module")
def strict_gateway(stack: Stack) -> Iterator[str]:
    """A second gateway: nonces required and 2-second access tokens."""
    port = free_port()
    with stack.extra_gateway(
        port,
        PUBLIC_ORIGIN=f"http://127.0.0.1:{port}",
        DPOP_NONCE_REQUIRED="true",
        ACCESS_TOKEN_TTL="2",
    ) as url:
        yield url


def _user(stack: Stack) -> str:
    email = f"client-{time.monotonic_ns()}@example.test"
    stack.create_user(email, PASSWORD)
    return email


def _logins(dsn: str, email: str) -> int:
    """How many sessions (families) the account ever had: each login at the gateway makes one."""

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            found: int = await conn.fetchval(
                "SELECT count(*) FROM refresh_session s JOIN users u ON u.id = s.user_id"
                " WHERE u.email = $1",
                email,
            )
            return found
        finally:
            await conn.close()

    return asyncio.run(count())


def _revoke_with_the_cli(stack: Stack, email: str) -> None:
    done = stack.revoke_sessions(email)
    assert done.returncode == 0, done.stderr
    assert "revoked 1 session(s)" in done.stdout


def _revoke_like_the_sessions_page(stack: Stack, email: str) -> None:
    """The demo's sessions page: another login of the same user revokes the first session."""
    other = DPoPAuth(email, PASSWORD)
    with httpx.Client(base_url=stack.gateway_url, auth=other, timeout=30) as page:
        sessions = page.get("/api/v1/auth/sessions").json()["sessions"]
        [first] = [s for s in sessions if not s["current"]]
        assert page.delete(f"/api/v1/auth/sessions/{uuid.UUID(first['id'])}").status_code == 204


@pytest.mark.parametrize("how", ["logout", "cli-revoke", "sessions-page-revoke"])
def test_an_ended_session_stays_ended(stack: Stack, migrated_dsn: str, how: str) -> None:
    """Issue 24, item 9: after a logout or a revoke the next request raises, and the client
    never logs in again with a password it kept (the old client did, undoing the revoke)."""
    email = _user(stack)
    auth = DPoPAuth(email, PASSWORD, refresh_margin=0)
    with httpx.Client(base_url=stack.gateway_url, auth=auth, timeout=30) as api:
        assert api.get("/api/v1/me").status_code == 200
        assert PASSWORD not in vars(auth).values()  # the password went with the login
        if how == "logout":
            auth.logout(api)
        elif how == "cli-revoke":
            _revoke_with_the_cli(stack, email)
        else:
            _revoke_like_the_sessions_page(stack, email)
        logins = _logins(migrated_dsn, email)
        # the revocation reaches the gateway over Redis within a moment
        deadline = time.monotonic() + 5
        with pytest.raises(AuthenticationError, match=r"ended|logged out"):
            while time.monotonic() < deadline:
                api.get("/api/v1/me")
                time.sleep(0.05)
        assert auth.ended and not auth.logged_in and auth.refresh_token is None
        with pytest.raises(AuthenticationError):
            api.get("/api/v1/me")
    assert _logins(migrated_dsn, email) == logins, "the client logged in again by itself"


def test_a_refused_password_is_not_tried_again(stack: Stack, migrated_dsn: str) -> None:
    email = _user(stack)
    auth = DPoPAuth(email, "not the password")
    with httpx.Client(base_url=stack.gateway_url, auth=auth, timeout=30) as api:
        with pytest.raises(AuthenticationError, match="login failed: 401"):
            api.get("/api/v1/me")
        with pytest.raises(AuthenticationError, match="login failed: 401"):
            api.get("/api/v1/me")
    assert auth.ended


def test_resume_carries_a_session_on_with_the_same_key(stack: Stack) -> None:
    email = _user(stack)
    first = DPoPAuth(email, PASSWORD)
    with httpx.Client(base_url=stack.gateway_url, auth=first, timeout=30) as api:
        assert api.get("/api/v1/me").status_code == 200
    kept = first.refresh_token
    assert kept is not None
    key = DPoPKey.from_pem(first.key.to_pem())
    resumed = DPoPAuth.resume(kept, key=key)
    with httpx.Client(base_url=stack.gateway_url, auth=resumed, timeout=30) as api:
        assert api.get("/api/v1/me").json()["email"] == email
        assert resumed.refresh_token not in (None, kept)  # rotated on the way in
        # another key cannot carry the session on
        stolen = DPoPAuth.resume(str(resumed.refresh_token), key=DPoPKey.generate())
        with pytest.raises(AuthenticationError, match="session ended: 401"):
            api.get("/api/v1/me", auth=stolen)
        assert api.get("/api/v1/me").status_code == 200
        resumed.logout(api)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, response: httpx.Response) -> None:
        self.seen.append((response.request.url.path, response.status_code))


@pytest.mark.parametrize("alg", ["Ed25519", "ES256"])
def test_login_sign_use_and_logout(
    stack: Stack, alg: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = DPoPKey.generate(alg)  # type: ignore[arg-type]
    auth = DPoPAuth(_user(stack), PASSWORD, key=key)
    with httpx.Client(base_url=stack.gateway_url, auth=auth, timeout=30) as api:
        me = api.get("/api/v1/me")
        assert me.status_code == 200, me.text
        assert api.post("/api/v1/notes", json={"title": "signed"}).status_code == 201
        [session] = api.get("/api/v1/auth/sessions").json()["sessions"]
        assert session["key_bound"] is True and session["jkt"] == key.thumbprint
        refresh = auth._refresh
        auth.logout(api)
        assert not auth.logged_in
        # the ended session's refresh token is dead even with the right key
        gone = httpx.post(
            f"{stack.gateway_url}/api/v1/auth/refresh",
            json={"refresh_token": refresh},
            headers={"DPoP": key.proof("POST", f"{stack.gateway_url}/api/v1/auth/refresh")},
        )
        assert gone.status_code == 401
    assert "eyJ" not in repr(auth)
    for record in caplog.records:
        assert not JWT_RE.search(record.getMessage())
        assert PASSWORD not in record.getMessage()


def test_nonce_retries_and_refresh_before_expiry_and_after_401(
    stack: Stack, strict_gateway: str
) -> None:
    recorder = Recorder()
    email = _user(stack)
    # margin 1 s on a 2 s token: the second request, 1.2 s later, refreshes first
    auth = DPoPAuth(email, PASSWORD, refresh_margin=1.0)
    with httpx.Client(
        base_url=strict_gateway, auth=auth, timeout=30, event_hooks={"response": [recorder]}
    ) as api:
        assert api.get("/api/v1/me").status_code == 200
        # login was asked for a nonce once, then succeeded; the request itself needed no retry
        assert recorder.seen[:3] == [
            ("/api/v1/auth/login", 400),
            ("/api/v1/auth/login", 200),
            ("/api/v1/me", 200),
        ]
        time.sleep(1.2)
        recorder.seen.clear()
        assert api.get("/api/v1/me").status_code == 200
        assert recorder.seen == [("/api/v1/auth/refresh", 200), ("/api/v1/me", 200)]

    # a client whose clock stands still does not see the expiry coming: the gateway's 401
    # triggers a refresh and one retry
    frozen = time.time()
    auth = DPoPAuth(email, PASSWORD, refresh_margin=0, clock=lambda: frozen)
    recorder.seen.clear()
    with httpx.Client(
        base_url=strict_gateway, auth=auth, timeout=30, event_hooks={"response": [recorder]}
    ) as api:
        assert api.get("/api/v1/me").status_code == 200
        time.sleep(2.5)
        recorder.seen.clear()
        assert api.get("/api/v1/me").status_code == 200
        assert recorder.seen == [
            ("/api/v1/me", 401),
            ("/api/v1/auth/refresh", 200),
            ("/api/v1/me", 200),
        ]


def test_async_client_concurrent_requests(stack: Stack) -> None:
    auth = DPoPAuth(_user(stack), PASSWORD)

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.gateway_url, auth=auth, timeout=30) as api:
            assert (await api.get("/api/v1/me")).status_code == 200
            responses = await asyncio.gather(*(api.get("/api/v1/notes") for _ in range(10)))
            await auth.alogout(api)
            return [r.status_code for r in responses]

    assert asyncio.run(run()) == [200] * 10


def test_never_continues_unbound(stack: Stack) -> None:
    """A gateway that does not bind (PUBLIC_ORIGIN unset) is an error, not a bearer session."""
    with stack.extra_gateway(PUBLIC_ORIGIN="") as url:
        auth = DPoPAuth(_user(stack), PASSWORD)
        with httpx.Client(base_url=url, auth=auth, timeout=30) as api:
            with pytest.raises(AuthenticationError, match="login failed: 400 invalid_dpop_proof"):
                api.get("/api/v1/me")
    with httpx.Client(base_url=stack.gateway_url, auth=DPoPAuth("x@example.test", "no")) as api:
        with pytest.raises(AuthenticationError, match="401"):
            api.get("/api/v1/me")


def test_the_readme_example_runs(stack: Stack) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- client-example -->", 1)[1].split("```python\n", 1)[1]
    code = block.split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 13
    email = _user(stack)
    code = code.replace("http://127.0.0.1:8000", stack.gateway_url).replace(
        "demo@example.test", email
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DEMO_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(email) and done.stdout.strip().endswith("[True]")
