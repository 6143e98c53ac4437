"""The gateway's own routes with PostgreSQL stalled: a bounded wait, then 503, never a queue."""

from __future__ import annotations

import asyncio
import time

from tests.gateway.conftest import FakeBackend, Harness, login, refresh_cookie, refresh_with


async def test_routes_answer_503_when_no_connection_frees_up(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env, DB_POOL_MAX="2", DB_ACQUIRE_TIMEOUT="0.3") as client:
        response = await login(client, backend.add_user())
        access, token = response.json()["access_token"], refresh_cookie(response)
        assert token is not None
        database = client.app.state.pool
        async with database.acquire(), database.acquire():
            # every connection is busy (a stalled database looks the same from here)
            started = time.monotonic()
            responses = await asyncio.gather(
                *(
                    client.get(
                        "/api/v1/auth/sessions", headers={"Authorization": f"Bearer {access}"}
                    )
                    for _ in range(20)
                ),
                refresh_with(client, token),
                login(client, backend.add_user()),
            )
            elapsed = time.monotonic() - started
        assert {r.status_code for r in responses} == {503}
        assert all(r.headers["retry-after"] == "5" for r in responses)
        assert elapsed < 3, elapsed
        assert client.app.state.db_outages.counts["TimeoutError"] == len(responses)
        # connections free again: the same refresh token still rotates (nothing was half-done)
        assert (await refresh_with(client, token)).status_code == 200


async def test_a_statement_stuck_on_a_lock_is_cut_by_the_command_timeout(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env, DB_COMMAND_TIMEOUT="0.5") as client:
        response = await login(client, backend.add_user())
        token = refresh_cookie(response)
        assert token is not None
        database = client.app.state.pool
        async with database.acquire() as conn, conn.transaction():
            # the family table: every rotation reads and writes it (issue 14: one row per family)
            await conn.execute("LOCK TABLE refresh_session IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            stuck = await refresh_with(client, token)
            elapsed = time.monotonic() - started
        assert stuck.status_code == 503, stuck.text
        assert elapsed < 3, elapsed
        assert (await refresh_with(client, token)).status_code == 200
