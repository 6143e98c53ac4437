"""Structured JSON logging shared by both services.

Log calls pass key/value fields (``log_event(logger, "refresh_rotated", sid=..., outcome=...)``);
there is no prose with values interpolated in, so a secret can only reach a log line if someone
passes it as a field by name. The request id travels in a context variable so every line written
while serving a request carries it without threading it through every call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterable
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tokengate_request_id", default=None
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            data["request_id"] = rid
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: a traceback can carry local values (tokens, passwords).
            data["exc_type"] = record.exc_info[0].__name__
        return json.dumps(data, default=str, separators=(",", ":"))


REQUEST_ID_HEADER = b"x-request-id"
# The id lands in log lines and in a header to the backend, so only short, harmless values are
# kept; anything else (newlines for log injection, huge values, quotes) is replaced, not cleaned.
_WELL_FORMED_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def new_request_id() -> str:
    return secrets.token_hex(16)


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-Id`` when well-formed, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _WELL_FORMED_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def configure_logging(level: str = "INFO") -> None:
    """Send every logger to stderr as one JSON object per line (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


def monotonic_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
