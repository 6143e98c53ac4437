"""LOG_FORMAT: JSON for production, one short line for people; the same fields either way."""

from __future__ import annotations

import json
import logging

import pytest
from servicekit.config import ConfigError
from servicekit.logs import (
    ConsoleFormatter,
    JsonFormatter,
    log_format_from_env,
    request_id_var,
    trace_id_var,
)


def _record(event: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, event, None, None)
    record.fields = fields
    return record


def test_log_format_is_validated_and_defaults_to_json() -> None:
    assert log_format_from_env({}) == "json"
    assert log_format_from_env({"LOG_FORMAT": "Console"}) == "console"
    assert log_format_from_env({}, default="console") == "console"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        log_format_from_env({"LOG_FORMAT": "xml"})


def test_both_formats_carry_the_same_fields() -> None:
    rid, tid = request_id_var.set("req-1"), trace_id_var.set("ab" * 16)
    try:
        record = _record(
            "request",
            method="GET",
            path="/api/v1/me",
            status=200,
            duration_ms=3.25,
            user_id="u-1",
        )
        data = json.loads(JsonFormatter().format(record))
        line = ConsoleFormatter().format(record)
    finally:
        request_id_var.reset(rid)
        trace_id_var.reset(tid)
    assert data["request_id"] == "req-1" and data["trace_id"] == "ab" * 16
    assert data["pid"] > 0
    # the console line: time, level, event, then status, method, path, duration, then the rest
    assert " INFO  request 200 GET /api/v1/me 3.25ms " in line
    for key in ("user_id", "request_id", "trace_id", "pid"):
        assert f"{key}={data[key]}" in line
    for key in ("method", "path", "status", "duration_ms", "event"):
        assert str(data[key]) in line


def test_console_lines_cannot_be_split_or_forged() -> None:
    line = ConsoleFormatter().format(_record("login", user_agent='x\n12:00 INFO forged "q"'))
    assert "\n" not in line
    assert 'user_agent="x\\n12:00 INFO forged \\"q\\""' in line
