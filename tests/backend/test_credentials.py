"""The credential check behind /internal/auth/validate, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import secrets
import statistics
import time

import asyncpg
import pytest
from argon2 import PasswordHasher

from backend.passwords import Argon2Params, Passwords
from tests.backend.conftest import Backend

PASSWORD = "correct horse battery"


def unique(local: str) -> str:
    """The session shares one database: every test gets addresses of its own."""
    return f"{local}-{secrets.token_hex(4)}@example.test"


def insert_hashed(dsn: str, email: str, password_hash: str) -> None:
    """A user whose hash was made elsewhere (older parameters), straight into the table."""

    async def insert() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO users (id, email, email_normal, password_hash)"
                " VALUES (gen_random_uuid(), $1, $1, $2)",
                email,
                password_hash,
            )
        finally:
            await conn.close()

    asyncio.run(insert())


def test_right_password(backend: Backend) -> None:
    email = unique("Alice")
    user = backend.create_user(email, PASSWORD, roles=("user", "admin"))
    response = backend.validate(f"  {email.upper()} ", PASSWORD)
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("id", "email", "roles", "status")} == {
        "id": user,
        "email": email.lower(),
        "roles": ["user", "admin"],
        "status": "active",
    }
    assert body["session_epoch"] == body["token_epoch"] == 0


@pytest.mark.parametrize("case", ["wrong_password", "unknown_email", "disabled", "bad_email"])
def test_every_bad_credential_gets_the_same_answer(backend: Backend, case: str) -> None:
    bob = unique("bob")
    backend.create_user(bob, PASSWORD)
    if case == "disabled":
        users = backend.client.app.state.users  # type: ignore[attr-defined]
        assert backend.client.portal is not None
        assert backend.client.portal.call(users.disable, bob)
    email, password = {
        "wrong_password": (bob, "not the password"),
        "unknown_email": (unique("nobody"), PASSWORD),
        "disabled": (bob, PASSWORD),
        "bad_email": ("not an email", PASSWORD),
    }[case]
    response = backend.validate(email, password)
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "invalid_credentials", "message": "invalid email or password"}
    }


@pytest.mark.parametrize(
    "body",
    [{"email": "a@b.c"}, {"email": 1, "password": "x"}, {"email": "a@b.c", "password": None}],
)
def test_malformed_validate_body_is_422(backend: Backend, body: dict[str, object]) -> None:
    path = "/internal/auth/validate"
    from internal_auth import TokenScope

    from tests.backend.conftest import GATEWAY_ID

    headers = backend.token(GATEWAY_ID, method="POST", path=path, scope=TokenScope.AUTH_VALIDATE)
    assert backend.client.post(path, json=body, headers=headers).status_code == 422


def test_audit_lines_for_each_outcome(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    carol = unique("carol")
    backend.create_user(carol, PASSWORD)
    with caplog.at_level(logging.INFO, logger="backend.audit"):
        backend.validate(carol, PASSWORD)
        backend.validate(carol, "wrong password!")
    outcomes = [
        r.fields["outcome"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "credential_check"
    ]
    assert outcomes == ["success", "failure"]
    assert PASSWORD not in caplog.text
    assert "argon2" not in caplog.text


def test_old_hash_is_upgraded_on_successful_login(backend: Backend, migrated_dsn: str) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=512, parallelism=1)
    email = unique("legacy")

    async def stored_hash() -> str:
        conn = await asyncpg.connect(migrated_dsn)
        try:
            return str(
                await conn.fetchval("SELECT password_hash FROM users WHERE email = $1", email)
            )
        finally:
            await conn.close()

    insert_hashed(migrated_dsn, email, weak.hash(PASSWORD))
    assert "m=512," in asyncio.run(stored_hash())
    assert backend.validate(email, "wrong password!").status_code == 401
    assert "m=512," in asyncio.run(stored_hash()), "a failed login must not rehash"
    assert backend.validate(email, PASSWORD).status_code == 200
    upgraded = asyncio.run(stored_hash())
    assert "m=1024,t=1,p=1" in upgraded
    assert backend.validate(email, PASSWORD).status_code == 200


def test_production_parameters_are_argon2id_64mib_t3_one_lane() -> None:
    params = Argon2Params()
    assert (params.time_cost, params.memory_kib, params.parallelism) == (3, 65536, 1)
    assert Passwords(params).hash_sync("x" * 12).startswith("$argon2id$v=19$m=65536,t=3,p=1$")


async def test_concurrent_verifications_are_capped() -> None:
    """A burst of logins must not take every core (the proxied traffic shares them)."""
    import threading

    passwords = Passwords(
        Argon2Params(time_cost=1, memory_kib=8192, parallelism=1), max_concurrent=1
    )
    stored = passwords.hash_sync(PASSWORD)
    running = peak = 0
    lock = threading.Lock()
    real = passwords._hasher

    class Counting:
        def verify(self, h: str, p: str) -> bool:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                time.sleep(0.01)
                return real.verify(h, p)
            finally:
                with lock:
                    running -= 1

        def check_needs_rehash(self, h: str) -> bool:
            return real.check_needs_rehash(h)

    passwords._hasher = Counting()  # type: ignore[assignment]
    results = await asyncio.gather(*(passwords.verify(stored, PASSWORD) for _ in range(6)))
    assert all(results)
    assert peak == 1


async def test_verification_does_not_block_the_event_loop() -> None:
    passwords = Passwords(Argon2Params(time_cost=2, memory_kib=32768, parallelism=1))
    stored = passwords.hash_sync(PASSWORD)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    assert await passwords.verify(stored, PASSWORD)
    elapsed = time.perf_counter() - start
    task.cancel()
    # a blocked loop would tick at most once during the whole verification
    assert ticks >= 3, (ticks, elapsed)


def test_unknown_email_and_wrong_password_take_similar_time(backend: Backend) -> None:
    slow = Passwords(Argon2Params(time_cost=2, memory_kib=16384, parallelism=1))
    backend.client.app.state.passwords = slow  # type: ignore[attr-defined]
    users = backend.client.app.state.users  # type: ignore[attr-defined]
    assert backend.client.portal is not None
    timing = unique("timing")
    backend.client.portal.call(users.create, timing, slow.hash_sync(PASSWORD), ("user",))

    def timed(email: str, password: str) -> float:
        start = time.perf_counter()
        assert backend.validate(email, password).status_code == 401
        return time.perf_counter() - start

    unknown, wrong = [], []
    for _ in range(7):
        unknown.append(timed(unique("ghost"), PASSWORD))
        wrong.append(timed(timing, "not the password"))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, (statistics.median(unknown), statistics.median(wrong))


def test_an_old_parameter_hash_costs_what_an_unknown_email_costs(
    backend: Backend, migrated_dsn: str
) -> None:
    """Issue 22, item 8: a wrong password for an account hashed with older, cheaper parameters
    answered in a fraction of the time of an unknown email, telling which accounts predate a
    parameter change. Medians of attempts interleaved through the validate route, so a load
    spike on a shared machine hits both sides alike."""
    current = Argon2Params(time_cost=2, memory_kib=16384, parallelism=1)
    backend.client.app.state.passwords = Passwords(current)  # type: ignore[attr-defined]
    old = unique("old-params")
    # the parameters before the change: cheaper by more than an order of magnitude
    legacy = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    insert_hashed(migrated_dsn, old, legacy)

    def timed(email: str) -> float:
        start = time.perf_counter()
        assert backend.validate(email, "not the password").status_code == 401
        return time.perf_counter() - start

    timed(old)  # warm up: the first request pays for connections and the code path
    # A round is 9 interleaved pairs; up to 3 rounds, because a neighbour's burst on a loaded
    # 2-core machine can skew one. Unpadded, every round is far off (about 0.2).
    ratios = []
    for _ in range(3):
        unknown, stale = [], []
        for _ in range(9):
            unknown.append(timed(unique("ghost")))
            stale.append(timed(old))
        ratios.append(statistics.median(stale) / statistics.median(unknown))
        if 0.6 < ratios[-1] < 1.4:
            break
    assert 0.6 < ratios[-1] < 1.4, ratios
