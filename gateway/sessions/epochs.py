"""Per-user epochs: what this gateway knows of "sessions valid after" for each account.

The source of truth is the backend's ``users`` table (``db/003_accounts.sql``): disabling an
account, changing its password or ending its sessions moves ``session_epoch`` and
``token_epoch`` forward; changing its roles moves ``token_epoch`` only. An access token whose
``iat`` is before its user's ``token_epoch`` is refused (:meth:`UserEpochs.token_denied`, on
every proxied request and every authenticated auth route, no I/O); refresh families created
before ``session_epoch`` are refused by the ledger inside the rotation's transaction, with the
epoch the backend gave for that very refresh.

How a change reaches every gateway:

- within a second: the changer publishes the new epochs on ``<prefix>epochs``
  (:mod:`servicekit.epochs`), which every gateway follows next to the revoked-session channel;
- whatever Redis did meanwhile: at start-up, after every reconnect to Redis, and every
  ``EPOCH_RELOAD_INTERVAL`` seconds, the gateway asks the backend for every epoch that moved
  within one access-token lifetime (older moves can no longer matter: every token issued before
  them has expired). A gateway started after Redis was flushed therefore still refuses the
  access tokens of a user disabled a minute ago. The backend answers in pages
  (``EPOCH_RELOAD_PAGE_SIZE`` accounts) that the loader follows to the end
  (:meth:`gateway.auth.backend_client.BackendClient.epochs_since`), however many changed.

Epochs only move forward here (the larger value wins), so a replayed or stale message can never
revive a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from servicekit.epochs import EpochUpdate
from servicekit.logs import log_event

logger = logging.getLogger("gateway.epochs")

# Loading the epochs must not wait for ever on a slow backend, and a failed load is retried
# sooner than the regular interval.
_RETRY_DELAY = 2.0

Loader = Callable[[int], Awaitable[Iterable[EpochUpdate]]]


class UserEpochs:
    def __init__(self, *, access_ttl: int, reload_interval: float) -> None:
        self._access_ttl = access_ttl
        self._interval = reload_interval
        # user id -> (session_epoch, token_epoch)
        self._epochs: dict[str, tuple[int, int]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.loaded = False

    def __len__(self) -> int:
        return len(self._epochs)

    def apply(self, update: EpochUpdate) -> None:
        old_session, old_token = self._epochs.get(update.user_id, (0, 0))
        session = max(old_session, update.session_epoch)
        token = max(old_token, update.token_epoch, session)
        if token > 0:
            self._epochs[update.user_id] = (session, token)

    def token_denied(self, user_id: str, iat: int) -> bool:
        """True if an access token of ``user_id`` issued at ``iat`` predates their epoch."""
        epochs = self._epochs.get(user_id)
        return epochs is not None and iat < epochs[1]

    def token_epoch(self, user_id: str) -> int:
        return self._epochs.get(user_id, (0, 0))[1]

    def prune(self, now: float | None = None) -> None:
        """Forget epochs every token issued before which has expired."""
        horizon = (time.time() if now is None else now) - self._access_ttl - 1
        for user_id in [u for u, (_, token) in self._epochs.items() if token < horizon]:
            del self._epochs[user_id]

    # -- reloading from the source of truth ---------------------------------------------------

    def request_reload(self) -> None:
        """Reload soon (after a Redis reconnect: broadcasts may have been missed)."""
        self._wake.set()

    async def reload(self, load: Loader) -> None:
        since = int(time.time()) - self._access_ttl - 1
        for update in await load(since):
            self.apply(update)
        self.prune()
        self.loaded = True

    async def start(self, load: Loader, *, wait: float = 2.0) -> None:
        """Start the reload loop; wait briefly for the first load so start-up begins warm."""
        first = asyncio.Event()
        self._task = asyncio.create_task(self._run(load, first), name="epoch-reloader")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first.wait(), wait)
        if not self.loaded:
            log_event(logger, "epochs_not_loaded", logging.WARNING)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)

    async def _run(self, load: Loader, first: asyncio.Event) -> None:
        while True:
            delay = self._interval
            try:
                await self.reload(load)
                first.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the backend down or answering badly: retry soon
                log_event(logger, "epochs_reload_failed", logging.WARNING, error=type(exc).__name__)
                delay = min(delay, _RETRY_DELAY)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)


async def wait_until_past(epoch: int) -> None:
    """Sleep until the clock has reached ``epoch`` (at most about a second after a change), so
    a token minted for this user now has ``iat >= epoch`` and survives the change it follows."""
    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(min(delay, 2.0))
