"""The share of the backend pool that unfinished uploads may hold (issue 21, item 2).

A body the gateway cannot buffer (one over ``PROXY_BUFFER_BYTES``, or a chunked one that grows
past it) streams to the backend as it arrives, so it holds a pooled connection for as long as the
client takes to send it. 260 clients sending a byte each used to hold all 256 connections, and
every other request then waited for a 504. Here each such upload first takes a place: at most
``total`` per worker (always fewer than the pool's connections, so requests without a body never
wait behind uploads), at most ``per_user`` for one user and ``per_ip`` for one client address.
Over a user's or an address's share is that client's own doing (429); over the total is the
gateway being busy (503); both come with ``Retry-After`` and nothing reaches the backend.

Counts are per worker, like the pool they share out. A place is held by a ``with`` block, so no
exit path can leak one.
"""

from __future__ import annotations

from types import TracebackType

from gateway import metrics
from gateway.errors import GatewayBusy, RateLimited

#: seconds a refused upload is told to wait: unfinished uploads end within BODY_READ_TIMEOUT of
#: their client stalling, so places come free quickly
RETRY_AFTER = 1


class Uploads:
    """Counters of unfinished uploads holding a backend connection, in all, per user, per IP."""

    def __init__(self, *, total: int, per_user: int, per_ip: int) -> None:
        self.total = total
        self.per_user = per_user
        self.per_ip = per_ip
        self.active = 0
        self._users: dict[str, int] = {}
        self._ips: dict[str, int] = {}

    def hold(self, user: str, ip: str) -> Place:
        """A place for one upload, or 429/503 (nothing is counted then)."""
        if self._users.get(user, 0) >= self.per_user:
            metrics.rate_limited("uploads-user")
            raise RateLimited(
                "too many unfinished uploads for this user",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        if self._ips.get(ip, 0) >= self.per_ip:
            metrics.rate_limited("uploads-ip")
            raise RateLimited(
                "too many unfinished uploads from this address",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        if self.active >= self.total:
            metrics.rate_limited("uploads")
            raise GatewayBusy(retry_after=RETRY_AFTER)
        self.active += 1
        self._users[user] = self._users.get(user, 0) + 1
        self._ips[ip] = self._ips.get(ip, 0) + 1
        return Place(self, user, ip)

    def count(self, *, user: str | None = None, ip: str | None = None) -> int:
        if user is not None:
            return self._users.get(user, 0)
        if ip is not None:
            return self._ips.get(ip, 0)
        return self.active

    def _release(self, user: str, ip: str) -> None:
        self.active -= 1
        _decrement(self._users, user)
        _decrement(self._ips, ip)


class Place:
    """One upload's place; ``with`` it, and leaving the block (any way) gives it back."""

    __slots__ = ("_ip", "_owner", "_user")

    def __init__(self, owner: Uploads | None, user: str, ip: str) -> None:
        self._owner = owner
        self._user = user
        self._ip = ip

    def __enter__(self) -> Place:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self._user, self._ip)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        # no entry per past client: the dicts hold only those with an upload in progress
        del counts[key]
