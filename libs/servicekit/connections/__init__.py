"""Client connections before the app: head size, fields, head time, keep-alive, the cap.

- :mod:`servicekit.connections.limits`: :class:`ConnectionLimits`, the six settings both services
  read (``MAX_REQUEST_HEAD_BYTES``, ``MAX_REQUEST_HEADERS``, ``MAX_REQUEST_LINE_BYTES``,
  ``REQUEST_HEAD_TIMEOUT``, ``KEEP_ALIVE_TIMEOUT``, ``MAX_CONNECTIONS``), and the file-descriptor
  budget they imply;
- :mod:`servicekit.connections.protocol`: the httptools protocol that enforces them.

:func:`uvicorn_options` is what :func:`servicekit.serve.serve` hands uvicorn.
"""

from __future__ import annotations

import functools
from typing import Any

from servicekit.connections.limits import (
    BACKEND_DEFAULTS,
    ConnectionLimits,
    descriptor_budget,
    ensure_descriptors,
)

__all__ = [
    "BACKEND_DEFAULTS",
    "ConnectionLimits",
    "descriptor_budget",
    "ensure_descriptors",
    "uvicorn_options",
]


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """uvicorn's ``http`` (our protocol, bound to ``limits``) and keep-alive options.

    A ``functools.partial`` of a module-level class pickles by reference, so the limits reach the
    workers uvicorn spawns with ``--workers N``.
    """
    from servicekit.connections.protocol import LimitedHttpToolsProtocol

    return {
        "http": functools.partial(LimitedHttpToolsProtocol, limits=limits),
        "timeout_keep_alive": limits.keep_alive_timeout,
    }
