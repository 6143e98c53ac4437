"""``REDIS_URL`` (plain and Sentinel) and ``DATABASE_URL`` with several hosts (issue 29): the one
parser each, its bounds, and the READONLY rule on a real Redis made a replica under the client."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from servicekit import pg_url, redis_url
from servicekit.config import ConfigError

from tests.support.servers import PrivateRedis


def test_sentinel_url_parts() -> None:
    target = redis_url.parse(
        "redis+sentinel://app:s3cret@h1:26379,[::1]:26380,h3/tokengate?db=2",
        sentinel_password="sentinel-pw",
    )
    assert target.is_sentinel
    assert target.sentinels == (("h1", 26379), ("::1", 26380), ("h3", 26379))
    assert (target.service, target.db, target.tls) == ("tokengate", 2, False)
    assert (target.username, target.password) == ("app", "s3cret")
    assert target.sentinel_password == "sentinel-pw"
    # no credential in what is logged
    assert "s3cret" not in repr(target) and "s3cret" not in target.describe()
    assert "sentinel-pw" not in repr(target)
    assert redis_url.parse("rediss+sentinel://h1:1,h2:2/m").tls
    plain = redis_url.parse("redis://u:plain-secret@h:6380/0")
    assert plain.describe() == "redis://h:6380" and not plain.is_sentinel


def test_the_master_password_is_never_sent_to_the_sentinels() -> None:
    target = redis_url.parse("redis+sentinel://:data-pw@127.0.0.1:1/m", sentinel_password="s-pw")
    pool: Any = redis_url.sync_pool(target, socket_timeout=0.5)
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel["password"] == "s-pw"
    assert pool.connection_kwargs["password"] == "data-pw"
    assert pool.is_master  # counts are read from the master only
    without: Any = redis_url.sync_pool(redis_url.parse("redis+sentinel://:data-pw@127.0.0.1:1/m"))
    assert (
        without.sentinel_manager.sentinels[0].connection_pool.connection_kwargs.get("password")
        is None
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///m",  # no host
        "redis+sentinel://h1:26379,,h2/m",  # empty host
        "redis+sentinel://h1:0/m",  # bad port
        "redis+sentinel://h1:99999/m",
        "redis+sentinel://h1:26379",  # no service
        "redis+sentinel://h1/bad name",
        "redis+sentinel://h1/m?db=x",
        "redis+sentinel://h1/m?socket_timeout=9",  # only db=N
        "redis+sentinel://" + ",".join(f"h{i}" for i in range(1, 18)) + "/m",  # over MAX_SENTINELS
        "redis+sentinel://h/" + "m" * 65,
        "redis://h/" + "x" * redis_url.MAX_URL_LENGTH,
        "http://h:6379",
        "redis+cluster://h:6379",
    ],
)
def test_bad_redis_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        redis_url.parse(url.replace("h1", "user:pw-not-shown@h1", 1))
    assert "pw-not-shown" not in str(caught.value)
    assert "REDIS_URL" in str(caught.value)


def test_sentinel_password_from_env_and_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    env = {"REDIS_URL": "redis+sentinel://h1/m", "REDIS_SENTINEL_PASSWORD_FILE": str(secret)}
    assert redis_url.from_env(env).sentinel_password == "from-a-file"
    both = {**env, "REDIS_SENTINEL_PASSWORD": "x"}
    assert redis_url.problems(both) == [
        "REDIS_SENTINEL_PASSWORD and REDIS_SENTINEL_PASSWORD_FILE are both set;"
        " set only one of them"
    ]
    # a sentinel password with a plain URL is a misconfiguration, not silently ignored
    assert redis_url.problems({"REDIS_URL": "redis://h", "REDIS_SENTINEL_PASSWORD": "x"})
    assert redis_url.problems({"REDIS_URL": "redis://h:6379/0"}) == []


def test_database_url_hosts() -> None:
    many = "postgresql://u:pw@db1:5432,db2:5433,[::1]/app?target_session_attrs=read-write"
    assert pg_url.hosts(many) == (("db1", 5432), ("db2", 5433), ("::1", 5432))
    assert pg_url.hosts("postgresql://u@db/app") == (("db", 5432),)
    assert pg_url.hosts("postgresql:///app?host=/run/pg&port=5433") == (("/run/pg", 5433),)
    assert pg_url.host_index(pg_url.hosts(many), ("db2", 5433)) == 1
    assert pg_url.host_index(pg_url.hosts(many), ("10.0.0.9", 5433)) == 1  # resolved name
    assert pg_url.host_index(pg_url.hosts(many), None) == -1


@pytest.mark.parametrize(
    "dsn",
    [
        # several hosts without read-write: a connection could land on a standby
        "postgresql://u:pw-not-shown@db1,db2/app",
        "postgresql://u:pw-not-shown@db1,db2/app?target_session_attrs=any",
        "postgresql://u:pw-not-shown@db1:x/app",
        "postgresql://u:pw-not-shown@"
        + ",".join(f"h{i}" for i in range(pg_url.MAX_HOSTS + 1))
        + "/app?target_session_attrs=read-write",
        "mysql://u:pw-not-shown@db/app",
    ],
)
def test_bad_database_urls_are_refused_without_echoing_them(dsn: str) -> None:
    found = pg_url.problems({"DATABASE_URL": dsn})
    assert len(found) == 1 and "DATABASE_URL" in found[0]
    assert "pw-not-shown" not in found[0]


# -- READONLY on a plain URL: the connection is dropped, not reused ------------------------------


@pytest.fixture
def replica_pair() -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    with tempfile.TemporaryDirectory(prefix="tokengate-readonly-") as tmp:
        first, second = PrivateRedis(Path(tmp) / "a"), PrivateRedis(Path(tmp) / "b")
        first.start()
        second.start()
        try:
            yield first, second
        finally:
            first.stop()
            second.stop()


def test_readonly_drops_the_connection_sync_and_async(
    replica_pair: tuple[PrivateRedis, PrivateRedis],
) -> None:
    server, other = replica_pair
    target = redis_url.parse(server.url)
    pool = redis_url.sync_pool(target, socket_timeout=2.0)
    client = redis.Redis(connection_pool=pool)
    admin = redis.Redis.from_url(server.url)

    async def scenario() -> None:
        aclient = redis_url.async_client(target, socket_timeout=2.0)
        try:
            assert client.set("k", "v") and await aclient.set("k", "v")
            connection = pool.get_connection()
            pool.release(connection)
            # the server behind the address becomes a replica under the open connections (a
            # failover behind a virtual IP): writes answer READONLY
            admin.replicaof("127.0.0.1", other.port)
            with pytest.raises(RedisConnectionError, match="READONLY"):
                client.set("k", "v2")
            # dropped: its socket is closed, so it is never reused against the replica
            assert connection._sock is None
            with pytest.raises(RedisConnectionError, match="READONLY"):
                await aclient.set("k", "v3")
            assert all(c._reader is None for c in aclient.connection_pool._available_connections)
        finally:
            await aclient.aclose()

    try:
        asyncio.run(scenario())
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()
        client.close()


def test_a_sentinel_connection_never_dials_a_default_host() -> None:
    """redis-py 7.4's asyncio ``send_packed_command`` connects by itself, past Sentinel: the
    connection must fail, not reach whatever Redis listens on localhost:6379 (this machine has
    one)."""
    target = redis_url.parse("redis+sentinel://127.0.0.1:1/m")
    pool: Any = redis_url.async_pool(target, socket_connect_timeout=0.5)

    async def scenario() -> None:
        connection = pool.make_connection()
        with pytest.raises(RedisConnectionError):
            await connection.send_packed_command(connection.pack_command("PING"))
        assert connection.host == redis_url.UNRESOLVED_MASTER

    asyncio.run(scenario())
