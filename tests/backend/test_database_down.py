"""The backend with PostgreSQL too slow or gone: 503 + Retry-After, logged and counted."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator

import asyncpg
import pytest
from internal_auth import KeySet, Minter, generate_private_key
from servicekit.db import PoolSettings
from servicekit.logs import JsonFormatter
from starlette.testclient import TestClient

from backend.app import create_app
from backend.passwords import Passwords
from tests.backend.conftest import BACKEND_ID, FAST_ARGON2, GATEWAY_ID, Backend, make_settings


@pytest.fixture
def slow_backend(migrated_dsn: str) -> Iterator[Backend]:
    key = generate_private_key()
    settings = dataclasses.replace(
        make_settings(migrated_dsn, KeySet([key.public_key])),
        pool=PoolSettings(max_size=2, acquire_timeout=0.3, command_timeout=0.5),
    )
    app = create_app(settings, passwords=Passwords(FAST_ARGON2))
    minter = Minter(key, issuer=GATEWAY_ID, audience=BACKEND_ID)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Backend(client=client, minter=minter, settings=settings)


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(JsonFormatter().format(r)) for r in caplog.records]


def test_a_locked_table_is_a_503_within_the_command_timeout(
    slow_backend: Backend, migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = slow_backend.create_user()
    portal = slow_backend.client.portal
    assert portal is not None

    async def lock() -> tuple[asyncpg.Connection, object]:
        conn = await asyncpg.connect(migrated_dsn)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
        return conn, tx

    conn, tx = portal.call(lock)
    try:
        with caplog.at_level(logging.INFO, logger="backend.app"):
            started = time.monotonic()
            response = slow_backend.call("POST", "/v1/notes", user=user, json={"title": "t"})
            elapsed = time.monotonic() - started
    finally:
        portal.call(tx.rollback)
        portal.call(conn.close)
    assert response.status_code == 503, (response.text, _lines(caplog))
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "service_unavailable"
    assert elapsed < 3, elapsed
    errors = [line for line in _lines(caplog) if line["event"] == "database_unavailable"]
    assert errors, _lines(caplog)
    assert errors[0]["level"] == "error" and errors[0]["exc_type"] == "TimeoutError", errors
    assert slow_backend.client.app.state.db_outages.counts["TimeoutError"] >= 1  # type: ignore[attr-defined]
    # the lock is gone: the same call works again, and nothing was half-written
    again = slow_backend.call("POST", "/v1/notes", user=user, json={"title": "t"})
    assert again.status_code == 201
    listed = slow_backend.call("GET", "/v1/notes", user=user).json()["items"]
    assert [n["title"] for n in listed] == ["t"]


def test_a_bug_behind_an_interface_error_class_stays_a_500(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    user = backend.create_user()
    store = backend.client.app.state.notes  # type: ignore[attr-defined]

    async def broken(*args: object, **kwargs: object) -> object:
        # what asyncpg raises for a wrong query argument: an InterfaceError that is a bug
        raise asyncpg.exceptions._base.DataError("invalid input for query argument $1")

    store.list = broken
    with caplog.at_level(logging.INFO, logger="backend.app"):
        response = backend.call("GET", "/v1/notes", user=user)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    events = [line["event"] for line in _lines(caplog)]
    assert "unhandled_error" in events and "database_unavailable" not in events
