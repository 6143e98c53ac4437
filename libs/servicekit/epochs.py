"""The per-user epoch broadcast: one channel, one message format, for whoever publishes (the
gateway after a password change, ``tokengate users ...`` after an operator's change) and every
gateway that listens.

An epoch is a whole Unix second (``db/003_accounts.sql``): a refresh family created before the
user's ``session_epoch``, or an access token issued before their ``token_epoch``, is dead.
Epochs only move forward, so a listener keeps the larger of what it knew and what it hears: a
stale or replayed message can never bring a token back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["EpochUpdate", "channel", "decode", "encode"]


def channel(prefix: str) -> str:
    """The pub/sub channel, next to the revoked-session channel (``<prefix>revoked``)."""
    return f"{prefix}epochs"


@dataclass(frozen=True)
class EpochUpdate:
    user_id: str
    session_epoch: int
    token_epoch: int


def encode(update: EpochUpdate) -> str:
    return json.dumps(
        {"sub": update.user_id, "session": update.session_epoch, "token": update.token_epoch},
        separators=(",", ":"),
    )


def decode(data: bytes | str) -> EpochUpdate | None:
    """The update in a message, or ``None`` for anything malformed (ignored, never fatal)."""
    try:
        raw = json.loads(data)
        sub, session, token = raw["sub"], raw["session"], raw["token"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    if not isinstance(sub, str) or not sub or len(sub) > 64:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (session, token)):
        return None
    return EpochUpdate(sub, session, token)
