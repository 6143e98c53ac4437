"""An audit event, bounded field by field, and the hash that chains it to its writer's previous
one.

The hash covers every stored field but the query cursor (``id``), in one canonical JSON form
that the database round-trips exactly (whole microseconds, ``details`` of strings, integers,
booleans and nulls only, keys sorted), so ``tokengate audit verify`` recomputes it from the row.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ZERO_HASH = bytes(32)
OUTCOMES = frozenset({"success", "failure"})

#: bounds of each text field (the migration's CHECK repeats them)
MAX_TYPE = 64
MAX_ACTOR = 64
MAX_IP = 64
MAX_USER_AGENT = 256
MAX_REQUEST_ID = 128
MAX_SERVICE = 64
MAX_RULE = 128
MAX_DETAILS_KEYS = 8
MAX_DETAIL_KEY = 32
MAX_DETAIL_VALUE = 128

_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TRACE = re.compile(r"[0-9a-f]{32}")
# A details key that names a credential is dropped whatever its value: a defence in depth, the
# event sites never pass one (the no-secret test searches every stored row).
_SECRET_KEY = re.compile(r"pass|token|secret|hash|cookie|authorization|key", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DetailValue = str | int | bool | None


def _text(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    # no NUL (PostgreSQL text refuses it) and no terminal control characters from client text
    cleaned = _CONTROL.sub("?", value)[:limit]
    return cleaned or None


def _uuid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _details(raw: Mapping[str, Any]) -> dict[str, DetailValue]:
    out: dict[str, DetailValue] = {}
    for key, value in sorted(raw.items()):
        if len(out) >= MAX_DETAILS_KEYS:
            break
        if not isinstance(key, str) or _SECRET_KEY.search(key):
            continue
        key = _CONTROL.sub("", key)[:MAX_DETAIL_KEY]
        if isinstance(value, bool) or value is None:
            out[key] = value
        elif isinstance(value, int):
            # JSON numbers beyond 2**53 do not survive every reader; clamp
            out[key] = max(min(value, 2**53), -(2**53))
        else:
            out[key] = _CONTROL.sub("?", str(value))[:MAX_DETAIL_VALUE]
    return out


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    """One audit event, already bounded: build it with :meth:`make`."""

    type: str
    outcome: str
    at: datetime
    actor: str | None = None
    subject: str | None = None
    subject_hmac: str | None = None
    family: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    service: str | None = None
    rule: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        type: str,
        outcome: str,
        *,
        at: datetime | None = None,
        actor: str | None = None,
        subject: str | None = None,
        subject_hmac: str | None = None,
        family: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        service: str | None = None,
        rule: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        if not _TYPE.fullmatch(type):
            raise ValueError("audit event type must be snake_case")
        if outcome not in OUTCOMES:
            raise ValueError("audit outcome must be success or failure")
        when = (at or now()).astimezone(UTC)
        return cls(
            type=type,
            outcome=outcome,
            # whole microseconds: what timestamptz stores, so the hash survives the round trip
            at=when,
            actor=_text(actor, MAX_ACTOR),
            subject=_uuid(subject),
            subject_hmac=(
                subject_hmac
                if subject_hmac and re.fullmatch(r"[0-9a-f]{64}", subject_hmac)
                else None
            ),
            family=_uuid(family),
            ip=_text(ip, MAX_IP),
            user_agent=_text(user_agent, MAX_USER_AGENT),
            request_id=_text(request_id, MAX_REQUEST_ID),
            trace_id=trace_id if trace_id and _TRACE.fullmatch(trace_id) else None,
            service=_text(service, MAX_SERVICE),
            rule=_text(rule, MAX_RULE),
            details=_details(details or {}),
        )


@dataclass(frozen=True)
class ChainLink:
    """An event's place in its writer's chain."""

    writer: str
    seq: int
    prev_hash: bytes
    hash: bytes


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def canonical(event: Event, *, writer: str, seq: int) -> bytes:
    fields = [
        writer,
        seq,
        _micros(event.at),
        event.type,
        event.outcome,
        event.actor,
        event.subject,
        event.subject_hmac,
        event.family,
        event.ip,
        event.user_agent,
        event.request_id,
        event.trace_id,
        event.service,
        event.rule,
        dict(event.details),
    ]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def chain_hash(prev_hash: bytes, event: Event, *, writer: str, seq: int) -> bytes:
    """SHA-256 over the previous link's hash and this event's canonical form."""
    return hashlib.sha256(prev_hash + canonical(event, writer=writer, seq=seq)).digest()


def writer_id(process: str, worker: str | None = None) -> str:
    """``<process>/<instance>/<worker>``: one chain per running worker. The instance is the host
    name; the worker, unless given, is the process id and a random suffix, so two apps in one
    process, or a restarted process that got an old pid back, start chains of their own.
    Row-level security keys on the first part."""
    instance = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
    return f"{process}/{instance}/{worker or f'{os.getpid()}-{secrets.token_hex(3)}'}"


_HMAC_LABEL = b"tokengate audit email v1"


def derive_hmac_key(secret: str) -> bytes:
    """The audit key derived from a secret the gateway already holds: a one-way derivation, so
    the audit key reveals nothing of the secret."""
    return hmac.new(secret.encode(), _HMAC_LABEL, hashlib.sha256).digest()


def email_hmac(key: bytes, normal_email: str) -> str:
    """An address that matched no account, stored as its keyed hash only (a typo is not
    leaked; the same address always gives the same value, so attacks can still be grouped)."""
    return hmac.new(key, normal_email.encode(), hashlib.sha256).hexdigest()
