"""A PostgreSQL failover seen from one gateway, through the HTTP app (issue 29).

The whole failover under traffic (a real standby promoted, Redis Sentinel) is in
``tests/faults/test_failover.py``; these force its two hard cases against the session database:

- a rotation committed on the old primary but lost with it: the client presents a successor the
  ledger never saw, which must be a plain 401 and never reuse (that would revoke the family and
  log an honest user out everywhere);
- a pool whose server turned read-only under it (a demoted primary, or a connection to a
  standby): every write answers 503 with ``Retry-After``, never a 500, and the pool expires its
  connections so the next ones go to whichever host accepts writes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg

from gateway import gauges, metrics
from gateway.metrics import REGISTRY  # the gateway's own registry, the one its listener serves
from tests.gateway.conftest import FakeBackend, Harness, login, refresh_cookie, refresh_with
from tests.gateway.test_refresh import _login


async def test_rotation_lost_in_a_failover_is_a_plain_401_not_reuse(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, migrated_dsn: str
) -> None:
    async with gateway(env) as client:
        access, token = await _login(client, backend)
        sid = client.app.state.tokens.verify_access(access).sid
        admin = await asyncpg.connect(migrated_dsn)
        try:
            before = await admin.fetchrow("SELECT * FROM refresh_session WHERE family_id = $1", sid)
            assert before is not None
            rotated = await refresh_with(client, token)
            assert rotated.status_code == 200
            successor = refresh_cookie(rotated)
            assert successor is not None
            # the failover: the standby never received the rotation, the row is as before it
            columns = [c for c in before.keys() if c != "family_id"]
            assignments = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
            await admin.execute(
                f"UPDATE refresh_session SET {assignments} WHERE family_id = $1",
                sid,
                *(before[c] for c in columns),
            )
            lost = await refresh_with(client, successor)
            assert lost.status_code == 401
            assert lost.json()["error"]["code"] == "invalid_token"
            # not reuse: the family is not revoked, so the user's other tokens are untouched
            row = await admin.fetchrow(
                "SELECT revoked_at, revoked_reason FROM refresh_session WHERE family_id = $1",
                sid,
            )
            assert row is not None and row["revoked_at"] is None, dict(row or {})
            assert sid not in client.app.state.revoked
            # and the ledger's own current token (the one the client no longer holds) still
            # rotates: nothing was ended by the failover
            assert (await refresh_with(client, token)).status_code == 200
        finally:
            await admin.close()


async def test_a_read_only_database_is_503_with_retry_after_and_expires_the_pool(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        _, token = await _login(client, backend)
        database = client.app.state.pool
        # every new session of this pool is read-only from now on, as on a standby; the pool's
        # open connections are replaced by the first failure (that is the behaviour under test)
        await database.pool.close()
        database.pool = await asyncpg.create_pool(
            env["DATABASE_URL"],
            min_size=1,
            max_size=2,
            server_settings={"default_transaction_read_only": "on"},
        )
        before = database.expirations
        answers = [
            await login(client, backend.add_user()),
            await refresh_with(client, token),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"]
            assert answer.json()["error"]["code"] == "service_unavailable"
        assert database.expirations > before


async def test_readyz_and_the_gauges_name_the_host_and_master_in_use(
    gateway: Harness, env: dict[str, str]
) -> None:
    parts = urlsplit(env["REDIS_URL"])
    master = f"{parts.hostname}:{parts.port or 6379}"
    async with gateway(env) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["in_use"] == {
            "postgres_host": 0,
            "redis_master": master,
            "redis_master_id": metrics.master_id(master),
        }
        gauges.sample_once(client.app.state)
    assert REGISTRY.get_sample_value("tokengate_gateway_postgres_host", {"index": "0"}) == 1
    labels = {"master": metrics.master_id(master)}
    assert REGISTRY.get_sample_value("tokengate_gateway_redis_master", labels) == 1


def test_the_master_label_is_bounded() -> None:
    """Sentinel may name any address: past MAX_MASTER_LABELS they all count as ``other``."""
    for i in range(metrics.MAX_MASTER_LABELS + 4):
        metrics.redis_master(f"10.9.9.{i}:6379")
    series = {
        s.labels["master"]
        for family in REGISTRY.collect()
        if family.name == "tokengate_gateway_redis_master"
        for s in family.samples
    }
    assert len(series) <= metrics.MAX_MASTER_LABELS + 1
    assert REGISTRY.get_sample_value("tokengate_gateway_redis_master", {"master": "other"}) == 1
