"""The audit trail both services write (issue 28; docs/AUDIT.md, docs/SECURITY.md "Audit trail").

- :mod:`servicekit.audit.events`: :class:`Event`, its bounds, and the chain hash;
- :mod:`servicekit.audit.store`: appending to a writer's chain in the caller's transaction,
  the monthly partitions, and the newest-first query;
- :mod:`servicekit.audit.writer`: the background batch writer for high-volume events.
"""

from servicekit.audit.events import (
    ZERO_HASH,
    ChainLink,
    Event,
    chain_hash,
    derive_hmac_key,
    email_hmac,
    writer_id,
)
from servicekit.audit.store import append, ensure_partitions, query, row_json
from servicekit.audit.writer import BatchWriter

__all__ = [
    "ZERO_HASH",
    "BatchWriter",
    "ChainLink",
    "Event",
    "append",
    "chain_hash",
    "derive_hmac_key",
    "email_hmac",
    "ensure_partitions",
    "query",
    "row_json",
    "writer_id",
]
