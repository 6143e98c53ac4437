"""A key set fetched from the gateway's internal listener, checked against keys already trusted.

:class:`RemoteKeySet` is a :class:`KeySet` (a :class:`Verifier` takes it as it takes any key
set, and :meth:`Verifier.verify` stays synchronous and does no I/O) whose keys are the pinned
ones plus the last good set fetched from ``url``:

- **What is accepted.** Over plain HTTP a ``…/jwks.json`` URL is never trusted by itself: the
  signed copy beside it (``…/jwks.jws``, :mod:`internal_auth.jwks`) is fetched and accepted only
  when it is signed by a key already trusted — the pinned keys are the root of that chain, and
  the last good set extends it. Over HTTPS with a pinned CA (``ssl_context``) the plain JWK Set
  is accepted as the channel vouches for it. Anything else is ignored, counted and logged.
- **Failures keep the last good set.** A fetch that fails or is refused changes nothing (a key
  endpoint down for hours rejects no token whose key was known).
- **Scheduled refresh** every ``refresh_interval`` seconds (default: the response's
  ``Cache-Control: max-age``), ±10 % jitter so a fleet of services does not fetch in step.
- **Unknown ``kid``** (:meth:`learn`): one fetch in flight at a time (single flight), at most one
  fetch per ``cooldown`` seconds, and a ``kid`` still unknown after a fetch is remembered for
  ``cooldown`` seconds, so a flood of random ``kid`` values costs at most one fetch per cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Callable

import httpx

from ._jws import b64url_decode
from .errors import KeyLoadError
from .jwks import MAX_SIGNED_SET_BYTES, verify_signed_key_set
from .keys import KeySet, PublicKey, load_public_keys

__all__ = ["RemoteKeySet", "token_kid"]

logger = logging.getLogger("internal_auth.remote")

#: ``on_fetch(outcome)``: ``ok``, ``unchanged``, ``refused`` (not signed by a trusted key, or
#: malformed), ``failed`` (unreachable, timeout, HTTP error) — for a counter.
FetchHook = Callable[[str], None]
_MAX_AGE_BOUNDS = (5.0, 86400.0)
_NEGATIVE_CACHE_SIZE = 4096


def token_kid(token: str | bytes) -> str | None:
    """The ``kid`` of a compact JWS's protected header, or ``None`` (nothing is verified here:
    it only says which key to look for)."""
    raw = token.encode("ascii", "replace") if isinstance(token, str) else token
    head, _, _ = raw.partition(b".")
    if not head or len(head) > 1024:
        return None
    try:
        header = json.loads(b64url_decode(head))
    except ValueError:
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) and len(kid) <= 128 else None


class RemoteKeySet(KeySet):
    """The pinned keys plus the gateway's published set (see the module docstring)."""

    __slots__ = (
        "_client",
        "_cooldown",
        "_fetch_lock",
        "_fetched",
        "_last_fetch",
        "_max_age",
        "_on_fetch",
        "_pinned",
        "_refresh_interval",
        "_ssl",
        "_task",
        "_unknown",
        "signed_url",
        "url",
    )

    def __init__(
        self,
        pinned: KeySet,
        url: str,
        *,
        refresh_interval: float | None = None,
        cooldown: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        on_fetch: FetchHook | None = None,
    ) -> None:
        super().__init__(pinned)
        if not url.startswith(("http://", "https://")):
            raise ValueError("the key set URL must be http:// or https://")
        if url.startswith("https://") and ssl_context is None:
            raise ValueError("an https:// key set URL needs the CA that signs its certificate")
        self._pinned = pinned
        self.url = url
        # Plain HTTP: only the signed copy can be trusted. HTTPS with a pinned CA: the set itself.
        self.signed_url: str | None = (
            url.removesuffix(".json") + ".jws" if url.startswith("http://") else None
        )
        if self.signed_url is not None and not url.endswith(".json"):
            raise ValueError(
                "a plain-HTTP key set URL must name …/jwks.json (the .jws is beside it)"
            )
        self._refresh_interval = refresh_interval
        self._cooldown = cooldown
        self._ssl = ssl_context
        self._on_fetch = on_fetch
        self._fetched: KeySet | None = None
        self._max_age = 300.0
        self._last_fetch = -float("inf")
        self._unknown: dict[str, float] = {}
        self._fetch_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(
            timeout=timeout,
            verify=ssl_context if ssl_context is not None else True,
            follow_redirects=False,
            trust_env=False,
        )

    # -- the KeySet face ---------------------------------------------------------------------

    @property
    def pinned(self) -> KeySet:
        return self._pinned

    @property
    def fetched(self) -> KeySet | None:
        """The last good set fetched (``None`` before the first)."""
        return self._fetched

    # -- fetching ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch once (a failure is logged, not raised: the pinned keys still verify), then keep
        refreshing in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop(), name="internal-jwks-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def refresh(self) -> str:
        """Fetch now (one at a time); the outcome, as counted by ``on_fetch``."""
        async with self._fetch_lock:
            return await self._fetch()

    async def learn(self, kid: str) -> bool:
        """Make sure ``kid`` is known if the gateway publishes it: ``True`` when it is now.

        Waits (without blocking the loop) for at most one fetch; never more than one fetch per
        cooldown, and a ``kid`` that one fetch did not bring is not asked for again until the
        cooldown has passed.
        """
        if kid in self._keys:
            return True
        now = time.monotonic()
        until = self._unknown.get(kid)
        if until is not None and now < until:
            return False
        async with self._fetch_lock:
            # another request may have fetched while this one waited for the lock
            if kid in self._keys:
                return True
            if time.monotonic() - self._last_fetch >= self._cooldown:
                await self._fetch()
            if kid in self._keys:
                return True
            if len(self._unknown) >= _NEGATIVE_CACHE_SIZE:
                self._unknown.clear()
            self._unknown[kid] = time.monotonic() + self._cooldown
            return False

    async def _refresh_loop(self) -> None:
        while True:
            interval = self._refresh_interval if self._refresh_interval else self._max_age
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))  # noqa: S311 (jitter only)
            try:
                await self.refresh()
            except Exception:  # pragma: no cover - _fetch catches what a fetch can raise
                logger.exception("internal key set refresh failed")

    async def _fetch(self) -> str:
        self._last_fetch = time.monotonic()
        url = self.signed_url or self.url
        try:
            response = await self._client.get(url, headers={"accept": "application/json"})
            body = response.content
            if response.status_code != 200:
                raise httpx.HTTPStatusError("not 200", request=response.request, response=response)
        except httpx.HTTPError as exc:
            return self._outcome("failed", type(exc).__name__)
        if len(body) > MAX_SIGNED_SET_BYTES:
            return self._outcome("refused", "document too large")
        try:
            if self.signed_url is not None:
                trusted = KeySet([*self._pinned, *(self._fetched or ())])
                fetched = verify_signed_key_set(body, trusted)
            else:
                fetched = load_public_keys(body)
        except KeyLoadError as exc:
            return self._outcome("refused", exc.message)
        self._max_age = _max_age(response.headers.get("cache-control"), self._max_age)
        unchanged = self._fetched is not None and set(self._fetched.kids) == set(fetched.kids)
        self._fetched = fetched
        keys: dict[str, PublicKey] = {key.kid: key for key in self._pinned}
        keys.update((key.kid, key) for key in fetched)
        # one assignment: a verify running meanwhile sees the old dict or the new one
        self._keys = keys
        for kid in fetched.kids:
            self._unknown.pop(kid, None)
        return self._outcome("unchanged" if unchanged else "ok", None)

    def _outcome(self, outcome: str, detail: str | None) -> str:
        if outcome in ("failed", "refused"):
            logger.warning(
                "internal key set fetch %s (%s); keeping the last good set",
                outcome,
                detail,
                extra={"event": "internal_jwks_fetch_" + outcome, "url": self.url},
            )
        if self._on_fetch is not None:
            self._on_fetch(outcome)
        return outcome

    def __repr__(self) -> str:
        return f"RemoteKeySet(url={self.url!r}, kids={self.kids!r})"


def _max_age(header: str | None, default: float) -> float:
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age":
            with contextlib.suppress(ValueError):
                low, high = _MAX_AGE_BOUNDS
                return min(max(float(int(value)), low), high)
    return default
