"""Gauges sampled in the background: listener state, revoked-set size, database pool use,
which PostgreSQL host and Redis master are in use, and the expiry of the hop's client
certificate.

Apart from :mod:`gateway.metrics` because it reads the app state, and the state's parts count in
:mod:`gateway.metrics`: a counters module imports no app state.
"""

from __future__ import annotations

import asyncio
import contextlib

from servicekit import redis_url, tls

from gateway import metrics
from gateway.state import GatewayState

SAMPLE_INTERVAL = 1.0


async def sample_gauges(state: GatewayState, interval: float = SAMPLE_INTERVAL) -> None:
    """Every ``interval`` seconds: listener state, revoked-set size, pool in use and idle."""
    while True:
        sample_once(state)
        await asyncio.sleep(interval)


def sample_once(state: GatewayState) -> None:
    # the client certificate presented on the hop: seconds until its notAfter
    tls.sample_expiry()
    revoked_set = getattr(state, "revoked", None)
    if revoked_set is not None:
        metrics.LISTENER_CONNECTED.set(1 if revoked_set.connected else 0)
        metrics.REVOKED_SESSIONS.set(len(revoked_set))
    database = getattr(state, "pool", None)
    if database is not None:
        metrics.postgres_host(database.host_index, len(database.hosts))
    client = getattr(state, "redis", None)
    if client is not None:
        metrics.redis_master(redis_url.current_master(client.connection_pool))
    pool = getattr(database, "pool", None)
    if pool is not None:
        with contextlib.suppress(Exception):
            size, idle = pool.get_size(), pool.get_idle_size()
            metrics.POOL_IN_USE.set(size - idle)
            metrics.POOL_IDLE.set(idle)
