"""Gauges sampled in the background: listener state, revoked-set size, database pool use.

Apart from :mod:`gateway.metrics` because it reads the app state, and the state's parts count in
:mod:`gateway.metrics`: a counters module imports no app state.
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway import metrics
from gateway.state import GatewayState

SAMPLE_INTERVAL = 1.0


async def sample_gauges(state: GatewayState, interval: float = SAMPLE_INTERVAL) -> None:
    """Every ``interval`` seconds: listener state, revoked-set size, pool in use and idle."""
    while True:
        sample_once(state)
        await asyncio.sleep(interval)


def sample_once(state: GatewayState) -> None:
    revoked_set = getattr(state, "revoked", None)
    if revoked_set is not None:
        metrics.LISTENER_CONNECTED.set(1 if revoked_set.connected else 0)
        metrics.REVOKED_SESSIONS.set(len(revoked_set))
    database = getattr(state, "pool", None)
    pool = getattr(database, "pool", None)
    if pool is not None:
        with contextlib.suppress(Exception):
            size, idle = pool.get_size(), pool.get_idle_size()
            metrics.POOL_IN_USE.set(size - idle)
            metrics.POOL_IDLE.set(idle)
