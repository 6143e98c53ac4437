"""Request ids and the JSON log formatter."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
from servicekit import logs


def test_new_request_ids_are_unique_and_well_formed() -> None:
    ids = {logs.new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for rid in list(ids)[:100]:
        # exactly 32 lower-case hex digits: int(rid, 16) would also take '0x', '_', '-', spaces
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
        assert logs.request_id_from([(logs.REQUEST_ID_HEADER, rid.encode())]) == rid


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and leave at once
        os.write(write, logs.new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child[:16] != logs.new_request_id()[:16]


def test_log_event_does_no_work_for_a_disabled_level(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("tests.servicekit.disabled")
    logger.setLevel(logging.WARNING)
    calls: list[str] = []
    monkeypatch.setattr(logger, "log", lambda level, event, **kw: calls.append(event))
    logs.log_event(logger, "quiet", logging.INFO, field="x")
    assert calls == []
    logs.log_event(logger, "loud", logging.WARNING, field="x")
    assert calls == ["loud"]


def test_json_lines_carry_fields_and_request_id_but_no_traceback() -> None:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", None, None)
    record.fields = {"sid": "s1", "n": 2}
    try:
        raise ValueError("secret-in-message")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    token = logs.request_id_var.set("rid-1")
    try:
        line = logs.JsonFormatter().format(record)
    finally:
        logs.request_id_var.reset(token)
    data = json.loads(line)
    assert data["event"] == "boom" and data["sid"] == "s1" and data["n"] == 2
    assert data["request_id"] == "rid-1" and data["exc_type"] == "ValueError"
    assert "secret-in-message" not in line and "Traceback" not in line
