"""The gateway prunes its own ledger: every ``REFRESH_LEDGER_PRUNE_INTERVAL`` seconds, in the
background, a :meth:`gateway.sessions.ledger.Ledger.prune` pass deletes the families that ended over
``REFRESH_LEDGER_RETENTION`` ago.

Every instance runs the schedule; the prune's transaction-scoped advisory lock lets one of them
work at a time and the others skip their turn, so adding instances adds no work. Intervals carry
±50 % jitter so instances started together do not all wake at once. A failed pass (database
down) is logged and tried again at the next interval: pruning is housekeeping, never urgent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from servicekit.logs import log_event

from gateway.sessions.ledger import Ledger

logger = logging.getLogger("gateway.ledger")


class LedgerPruner:
    def __init__(self, ledger: Ledger, *, retention: int, interval: int) -> None:
        self._ledger = ledger
        self._retention = retention
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        #: completed passes (tests and metrics read it)
        self.passes = 0

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-pruner")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            # jitter only, not a secret
            await asyncio.sleep(self._interval * random.uniform(0.5, 1.5))  # noqa: S311
            try:
                await self._ledger.prune(retention=self._retention, now=int(time.time()))
                self.passes += 1
            except Exception as exc:  # housekeeping: never let it kill the gateway
                log_event(logger, "ledger_prune_failed", logging.WARNING, error=type(exc).__name__)
