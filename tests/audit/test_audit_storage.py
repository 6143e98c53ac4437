"""The audit tables against real PostgreSQL: least privilege per role, the chain and its
verification, and pruning whole partitions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from servicekit.audit import Event, append

from tokengate.audit import ChainReport, prune_partitions, verify_chains


def _as_role(dsn: str, role: str) -> str:
    base, _, dbname = dsn.rpartition("/")
    host = base.split("@")[-1]
    return f"postgresql://{role}@{host}/{dbname}"


def _event(n: int, **kw: object) -> Event:
    return Event.make("login_failed", "failure", details={"n": n}, **kw)  # type: ignore[arg-type]


async def _write(dsn: str, writer: str, events: list[Event]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await append(conn, writer, events)
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", ["gateway", "backend"])
def test_service_roles_only_append_their_own_rows(audit_db: str, kind: str) -> None:
    other = "backend" if kind == "gateway" else "gateway"
    dsn = _as_role(audit_db, f"tokengate_{kind}")
    asyncio.run(_write(dsn, f"{kind}/host/1", [_event(1), _event(2)]))

    async def attempts() -> dict[str, str]:
        conn = await asyncpg.connect(dsn)
        out: dict[str, str] = {}
        statements = {
            "update": "UPDATE audit_events SET outcome = 'success'",
            "delete": "DELETE FROM audit_events",
            "truncate": "TRUNCATE audit_events",
            "truncate_partition": "TRUNCATE "
            + "audit_events_"
            + datetime.now(UTC).strftime("%Y%m"),
            "head_rewind": "UPDATE audit_heads SET last_seq = 0",
            "head_delete": "DELETE FROM audit_heads",
        }
        try:
            for name, sql in statements.items():
                try:
                    await conn.execute(sql)
                    out[name] = "allowed"
                except asyncpg.InsufficientPrivilegeError:
                    out[name] = "denied"
            try:
                async with conn.transaction():
                    await append(conn, f"{other}/host/1", [_event(3)])
                out["other_writer"] = "allowed"
            except (asyncpg.InsufficientPrivilegeError, PermissionError):
                out["other_writer"] = "denied"
        finally:
            await conn.close()
        return out

    assert set(asyncio.run(attempts()).values()) == {"denied"}
    owner = asyncio.run(_verify(audit_db))
    assert [(r.writer, r.events, r.problem) for r in owner] == [(f"{kind}/host/1", 2, None)]


def test_the_trigger_refuses_changes_even_to_the_owner(audit_db: str) -> None:
    asyncio.run(_write(audit_db, "gateway/h/1", [_event(1)]))

    async def attempt(sql: str) -> str:
        conn = await asyncpg.connect(audit_db)
        try:
            await conn.execute(sql)
            return "allowed"
        except asyncpg.InsufficientPrivilegeError:
            return "denied"
        finally:
            await conn.close()

    for sql in (
        "UPDATE audit_events SET outcome = 'success'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        assert asyncio.run(attempt(sql)) == "denied", sql


async def _verify(dsn: str) -> list[ChainReport]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await verify_chains(conn))
    finally:
        await conn.close()


async def _tamper(dsn: str, sql: str) -> None:
    """As the owner with the append-only triggers off (what a DBA could do)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE audit_events SET ip = '10.9.9.9' WHERE seq = 3", "seq 3: hash does not match"),
        ("DELETE FROM audit_events WHERE seq = 2", "seq 2 missing"),
        ("DELETE FROM audit_events WHERE seq = 5", "head says 5"),
        ("UPDATE audit_events SET seq = 9 WHERE seq = 5", "seq 5 missing"),
    ],
)
def test_verify_names_the_first_broken_link(audit_db: str, sql: str, expected: str) -> None:
    asyncio.run(_write(audit_db, "gateway/h/1", [_event(i, ip="10.0.0.1") for i in range(3)]))
    asyncio.run(_write(audit_db, "gateway/h/1", [_event(i) for i in range(2)]))
    asyncio.run(_write(audit_db, "gateway/h/2", [_event(1)]))
    reports = asyncio.run(_verify(audit_db))
    assert [r.problem for r in reports] == [None, None]
    asyncio.run(_tamper(audit_db, sql + " AND writer = 'gateway/h/1'"))
    reports = asyncio.run(_verify(audit_db))
    problems = {r.writer: r.problem for r in reports}
    assert problems["gateway/h/2"] is None
    assert expected in (problems["gateway/h/1"] or "")


def test_verify_exit_status_through_the_cli(
    audit_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokengate.cli import main

    asyncio.run(_write(audit_db, "gateway/h/1", [_event(i) for i in range(3)]))
    monkeypatch.setenv("DATABASE_URL", audit_db)
    assert main(["audit", "verify"]) == 0
    asyncio.run(_tamper(audit_db, "DELETE FROM audit_events WHERE seq = 3"))
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN  gateway/h/1: chain ends at seq 2 but its head says 3" in out


def test_prune_drops_old_partitions_and_the_chain_still_verifies(audit_db: str) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=150)
    asyncio.run(_write(audit_db, "gateway/h/1", [_event(i, at=old) for i in range(4)]))
    asyncio.run(_write(audit_db, "gateway/h/1", [_event(i) for i in range(3)]))

    async def prune() -> list[str]:
        conn = await asyncpg.connect(audit_db)
        try:
            return await prune_partitions(conn, timedelta(days=90))
        finally:
            await conn.close()

    dropped = asyncio.run(prune())
    assert "audit_events_" + old.strftime("%Y%m") in dropped
    assert "audit_events_" + now.strftime("%Y%m") not in dropped
    reports = asyncio.run(_verify(audit_db))
    assert [(r.events, r.problem) for r in reports] == [(3, None)]
    assert asyncio.run(prune()) == []


def test_tail_and_query_print_json_lines(
    audit_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import uuid

    from tokengate.cli import main

    subject = str(uuid.uuid4())
    asyncio.run(_write(audit_db, "gateway/h/1", [_event(i, subject=subject) for i in range(3)]))
    asyncio.run(_write(audit_db, "gateway/h/1", [_event(9)]))
    monkeypatch.setenv("DATABASE_URL", audit_db)
    assert main(["audit", "tail", "-n", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["details"]["n"] for e in lines] == [2, 9]  # the newest two, oldest first
    assert main(["audit", "query", "--user-id", subject, "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in found] == [3, 2, 1] and {e["subject"] for e in found} == {subject}
    assert "hash" not in found[0] and "subject_hmac" not in found[0]
    # bounds: a limit out of range and a duration that is not one stop with exit 2
    assert main(["audit", "query", "--limit", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["audit", "query", "--since", "yesterday"])
