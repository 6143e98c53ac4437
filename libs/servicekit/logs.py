"""Structured logging shared by both services: JSON lines, or short console lines for people.

``LOG_FORMAT=json`` (the default, for production) writes one JSON object per line;
``LOG_FORMAT=console`` (``tokengate dev``'s default) writes one short line a person can read,
with the same fields: the time, the level, the event (for a request: status, method, path and
duration first), then every other field as ``key=value``.

Log calls pass key/value fields (``log_event(logger, "refresh_rotated", sid=..., outcome=...)``);
there is no prose with values interpolated in, so a secret can only reach a log line if someone
passes it as a field by name. The request id travels in a context variable so every line written
while serving a request carries it without threading it through every call.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from servicekit.config import ConfigError

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tokengate_request_id", default=None
)
#: The W3C trace id (32 hex digits) of the request being served (:mod:`servicekit.tracing`).
trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tokengate_trace_id", default=None
)

LOG_FORMATS = ("json", "console")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level_from_env(environ: Mapping[str, str], default: str = "INFO") -> str:
    value = (environ.get("LOG_LEVEL") or default).strip().upper()
    if value not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return value


def log_format_from_env(environ: Mapping[str, str], default: str = "json") -> str:
    value = (environ.get("LOG_FORMAT") or default).strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be json or console, got {value!r}")
    return value


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Every field of one log line, in the order both formats write them."""
    data: dict[str, Any] = {
        "ts": round(record.created, 3),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
        # several workers write to one stream: the pid says which one
        "pid": record.process,
    }
    rid = request_id_var.get()
    if rid is not None:
        data["request_id"] = rid
    tid = trace_id_var.get()
    if tid is not None:
        data["trace_id"] = tid
    fields = getattr(record, "fields", None)
    if fields:
        data.update(fields)
    if record.exc_info and record.exc_info[0] is not None:
        # The type only: a traceback can carry local values (tokens, passwords).
        data["exc_type"] = record.exc_info[0].__name__
    return data


# Built once: json.dumps with any non-default option builds a new encoder on every call.
_ENCODE = json.JSONEncoder(default=str, separators=(",", ":")).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _ENCODE(record_fields(record))


# Values a person reads as they are; anything else is quoted so a space or a newline in a value
# (a user agent, an error text) can neither split the line nor forge another one.
_PLAIN = re.compile(r"[A-Za-z0-9._:/@{}+-]{1,200}")
_CONSOLE_FIRST = ("status", "method", "path", "duration_ms")


def _console_value(value: Any) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


class ConsoleFormatter(logging.Formatter):
    """``12:00:01.123 INFO  request 200 GET /api/v1/me 3.1ms user_id=... request_id=...``"""

    def format(self, record: logging.LogRecord) -> str:
        data = record_fields(record)
        clock = time.strftime("%H:%M:%S", time.localtime(data.pop("ts")))
        millis = int(record.msecs)
        parts = [f"{clock}.{millis:03d}", f"{data.pop('level').upper():5}", data.pop("event")]
        data.pop("logger")
        if parts[-1] == "request":
            for key in _CONSOLE_FIRST:
                if key in data:
                    value = data.pop(key)
                    parts.append(f"{value}ms" if key == "duration_ms" else _console_value(value))
        parts += [
            f"{key}={_console_value(value)}" for key, value in data.items() if value is not None
        ]
        return " ".join(parts)


REQUEST_ID_HEADER = b"x-request-id"
# The id lands in log lines and in a header to the backend, so only short, harmless values are
# kept; anything else (newlines for log injection, huge values, quotes) is replaced, not cleaned.
_WELL_FORMED_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


# A request id needs to be unique, not secret (clients may choose their own): a random per-process
# prefix and a counter give that without a getrandom() system call on every request.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def _new_prefix() -> None:
    # A forked child must not repeat its parent's ids.
    global _ID_PREFIX, _id_counter
    _ID_PREFIX = secrets.token_hex(8)
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    """A fresh id, unique across processes and restarts: 16 random hex digits and a counter."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-Id`` when well-formed, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return request_id_or_new(value)
    return new_request_id()


def request_id_or_new(value: bytes | None) -> str:
    """``value`` (an ``X-Request-Id`` header) when well-formed, else a new id."""
    if value is not None and _WELL_FORMED_REQUEST_ID.fullmatch(value):
        return value.decode("ascii")
    return new_request_id()


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def configure_logging(level: str = "INFO", log_format: str = "json") -> None:
    """Send every logger to stderr, one line per event in ``log_format`` (idempotent)."""
    formatter: logging.Formatter = (
        ConsoleFormatter() if log_format == "console" else JsonFormatter()
    )
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter | ConsoleFormatter):
            handler.setFormatter(formatter)
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)


def monotonic_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
