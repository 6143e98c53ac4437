"""Issue 22: the gateway's epoch reload read at most 10,000 accounts, so a gateway that started
(or reconnected to Redis) while more accounts had changed within one access-token lifetime
forgot the rest, and their old access tokens passed. It now pages through the backend's list.

Real backend app over a database of its own holding 10,050 changed accounts, real gateway app
in front of it (ASGI, in process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from internal_auth import KeySet, PrivateKey

from backend.app import create_app as create_backend
from backend.passwords import Passwords
from gateway.app import create_app
from gateway.settings import Settings
from tests.backend.conftest import FAST_ARGON2, make_settings
from tokengate.migrate import migrate

CHANGED = 10_050  # just past the old cap


@pytest.fixture(scope="module")
def crowded_dsn(new_database: Callable[[], str]) -> str:
    """A migrated database where CHANGED accounts moved their epochs within the last minutes."""
    dsn = new_database()

    async def fill() -> None:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO users (id, email, email_normal, password_hash, session_epoch,"
                " token_epoch)"
                " SELECT gen_random_uuid(), 'bulk-' || g || '@example.test',"
                " 'bulk-' || g || '@example.test', 'unusable', $1 - g % 300, $1 - g % 300"
                " FROM generate_series(1, $2) AS g",
                int(time.time()),
                CHANGED,
            )
        finally:
            await conn.close()

    asyncio.run(fill())
    return dsn


@pytest.mark.parametrize("page_size", ["1000", "10000"])
async def test_the_reload_reads_every_changed_account_past_10000(
    crowded_dsn: str, env: dict[str, str], internal_key: PrivateKey, page_size: str
) -> None:
    backend = create_backend(
        make_settings(crowded_dsn, KeySet([internal_key.public_key])),
        passwords=Passwords(FAST_ARGON2),
    )
    async with backend.router.lifespan_context(backend):
        settings = Settings.from_env({**env, "EPOCH_RELOAD_PAGE_SIZE": page_size})
        app = create_app(settings, backend_transport=httpx.ASGITransport(app=backend))
        async with app.router.lifespan_context(app):
            state = app.state
            # the start-up load may still be running on a loaded machine: load once more, here
            updates = await state.backend.epochs_since(int(time.time()) - 3600)
            await state.epochs.reload(state.backend.epochs_since)
    assert len(updates) == CHANGED
    assert len({u.user_id for u in updates}) == CHANGED
    assert len(state.epochs) == CHANGED


def test_epoch_reload_page_size_setting(env: dict[str, str]) -> None:
    from servicekit.config import ConfigError

    assert Settings.from_env(env).epoch_reload_page_size == 1000
    assert Settings.from_env({**env, "EPOCH_RELOAD_PAGE_SIZE": "1"}).epoch_reload_page_size == 1
    for bad in ("0", "10001", "many"):
        with pytest.raises(ConfigError, match="EPOCH_RELOAD_PAGE_SIZE"):
            Settings.from_env({**env, "EPOCH_RELOAD_PAGE_SIZE": bad})


@pytest.mark.parametrize(
    "second_page",
    [
        [{"id": "b", "session_epoch": 5, "token_epoch": 5}],  # the same page again
        [{"id": "a", "session_epoch": 5, "token_epoch": 5}],  # back before the cursor
        [{"id": "c", "session_epoch": 4, "token_epoch": 4}],
    ],
)
async def test_a_cursor_that_does_not_move_on_is_a_bad_gateway(
    internal_key: PrivateKey, second_page: list[dict[str, object]]
) -> None:
    """A broken backend whose pages repeat or go back must not keep the reload looping."""
    from internal_auth import Minter

    from gateway.auth.backend_client import BackendClient
    from gateway.errors import BadGateway

    calls = 0

    def scripted(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        first = [{"id": "b", "session_epoch": 5, "token_epoch": 5}]
        return httpx.Response(
            200, json={"epochs": first if calls == 1 else second_page, "next": "5.b"}
        )

    minter = Minter(internal_key, issuer="tokengate-gateway", audience="tokengate-backend")
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(scripted), base_url="http://backend.internal"
    ) as http:
        client = BackendClient(http, minter, gateway_id="tokengate-gateway", epochs_page_size=1)
        with pytest.raises(BadGateway):
            await client.epochs_since(0)
    assert calls == 2
