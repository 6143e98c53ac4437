"""Reloading ``GATEWAY_CONFIG`` without a restart (issue 25): each worker watches the file's
content and swaps in a new compiled :class:`~gateway.policy.Policy` when it changes.

The peers' reload bugs are the design brief (Pomerium #5444 partial writes, #4708 bind mounts
whose mtime never moves, #6295 a reload that left the evaluator on the old policy):

- **content, not mtime**: every ``GATEWAY_CONFIG_RELOAD_INTERVAL`` seconds (and at once on
  SIGHUP) the file's bytes are hashed; a bind mount, an atomic rename and an in-place write all
  change them;
- **settled**: a change is applied only when two reads at least :data:`SETTLE_SECONDS` apart
  hash the same: an in-place write can be a valid prefix of the intended file (the rules before
  the one that denies), and must not be served while the editor is still writing;
- **off the request path**: reading, hashing, validating and compiling run in a thread
  (``asyncio.to_thread``); the event loop only swaps one reference, ``BackendProxy.policy``,
  which a request reads once (``gateway.proxy.handler._decide``), so every request sees one
  whole table, old or new, never a mix;
- **last good table kept**: a file that fails validation (or cannot be read) changes nothing
  that serves; it is logged once per content as ``config_reload_failed`` with every problem line
  (file, line, key, reason) and counted in ``config_reloads_total{outcome="failed"}``;
- **services need a restart**: routes and rules reload; a change to ``[services]`` or
  ``identity`` (URLs, audiences, pools, TLS files, the identity service) is refused with
  ``config_reload_refused`` and ``outcome="refused"``, and the old table stays: pools are opened
  in the lifespan and the identity service's client is fixed there. ``--workers N`` with SIGHUP
  replaces workers one at a time (README, "Reloading the policy").

``config_hash`` is a number (the first 48 bits of the SHA-256, exact in a float) rather than a
label: prometheus-client's multiprocess mode keeps every label value a worker ever wrote in its
file, so an ``info{hash=...}`` series would never leave the scrape; one numeric series per
worker (``pid``) just changes value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Protocol

from servicekit.logs import log_event

from gateway import metrics
from gateway.policy.loader import PolicyFileError, parse_policy, read_policy_file
from gateway.policy.table import Policy

logger = logging.getLogger("gateway.policy")

#: Seconds between the two reads whose hashes must agree before a change is applied.
SETTLE_SECONDS = 0.1
#: Hex digits of the SHA-256 that ``config_hash`` shows (48 bits: exact in a float64).
HASH_DIGITS = 12


def hash_metric(digest: str) -> int:
    """The value of ``tokengate_gateway_config_hash`` for a file of SHA-256 ``digest``."""
    return int(digest[:HASH_DIGITS], 16)


class PolicyHolder(Protocol):
    """What holds the one reference requests read (``gateway.proxy.backend.BackendProxy``)."""

    policy: Policy | None


class PolicyReloader:
    """Watches one ``GATEWAY_CONFIG`` file for one worker and swaps its compiled table in."""

    def __init__(
        self,
        holder: PolicyHolder,
        path: str,
        *,
        interval: float,
        max_bytes: int,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        current = holder.policy
        if current is None:
            raise ValueError("PolicyReloader needs the policy loaded at start-up")
        self._holder = holder
        self._path = path
        self._interval = interval
        self._max_bytes = max_bytes
        self._settle = settle
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: the digest of the content last refused or found invalid (logged and counted once)
        self._rejected: str | None = None
        self.applied = 0
        self._loaded(current)

    @property
    def digest(self) -> str:
        policy = self._holder.policy
        return policy.digest if policy is not None else ""

    def _loaded(self, policy: Policy) -> None:
        metrics.CONFIG_HASH.set(hash_metric(policy.digest))
        metrics.CONFIG_LOADED_AT.set(time.time())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="policy-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Check now (SIGHUP): a content refused before is looked at, and reported, again."""
        self._rejected = None
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.check()
            except Exception as exc:
                # never let the watcher die: the last good table keeps serving either way
                log_event(logger, "config_reload_error", logging.ERROR, error=type(exc).__name__)

    def _read(self) -> tuple[bytes | None, str, PolicyFileError | None]:
        try:
            raw = read_policy_file(self._path, max_bytes=self._max_bytes)
        except PolicyFileError as exc:
            # the reason (missing, unreadable, too large) is the digest: reported once per reason
            return None, hashlib.sha256(str(exc).encode()).hexdigest(), exc
        return raw, hashlib.sha256(raw).hexdigest(), None

    async def check(self) -> str:
        """One look at the file: ``unchanged``, ``unsettled``, ``applied``, ``failed`` or
        ``refused`` (``failed``/``refused`` only the first time a content is seen)."""
        _, first, _ = await asyncio.to_thread(self._read)
        if first in (self.digest, self._rejected):
            return "unchanged"
        await asyncio.sleep(self._settle)
        raw, second, error = await asyncio.to_thread(self._read)
        if second != first:
            # still being written: the next look (interval or SIGHUP) decides
            return "unsettled"
        if second == self.digest:
            return "unchanged"
        if error is None and raw is not None:
            try:
                policy = await asyncio.to_thread(parse_policy, raw, self._path)
            except PolicyFileError as exc:
                error = exc
        if error is not None:
            # every problem line names the file, the line, the key and the reason; values are
            # echoed shortened, URLs with credentials redacted (loader), never a secret
            return self._reject(second, "failed", problems=error.problems)
        current = self._holder.policy
        assert current is not None
        if policy.services != current.services or policy.identity != current.identity:
            return self._reject(
                second,
                "refused",
                reason="[services] or identity changed: restart the gateway to apply it "
                "(with --workers N, SIGHUP replaces the workers one at a time)",
            )
        # the one swap: a request reads holder.policy once, so it sees this table or the last
        self._holder.policy = policy
        self._rejected = None
        self.applied += 1
        metrics.CONFIG_RELOADS.labels("applied").inc()
        self._loaded(policy)
        log_event(
            logger,
            "config_reloaded",
            path=self._path,
            sha256=policy.digest,
            rules=len(policy.rules),
            routes=len(policy.routes),
        )
        return "applied"

    def _reject(self, digest: str, outcome: str, **fields: object) -> str:
        """Keep the last good table; log and count this content once."""
        self._rejected = digest
        metrics.CONFIG_RELOADS.labels(outcome).inc()
        log_event(
            logger,
            f"config_reload_{outcome}",
            logging.ERROR,
            path=self._path,
            kept=self.digest,
            **fields,
        )
        return outcome
