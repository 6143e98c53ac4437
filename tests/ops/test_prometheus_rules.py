"""The example Prometheus config and alert rules in docs/prometheus/: valid, and they alert when
they should (promtool's own unit tests, docs/prometheus/alerts_test.yml). That every metric the
rules name exists in a live scrape is checked in tests/e2e/test_metrics_e2e.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does)"
)


def _promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=DOCS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_rules_are_valid() -> None:
    assert "SUCCESS: 4 rules found" in _promtool("check", "rules", "alerts.yml")


def test_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_scrape_config_is_valid() -> None:
    _promtool("check", "config", "prometheus.yml")


def test_the_unit_tests_cover_every_alert() -> None:
    rules = set(re.findall(r"- alert: (\w+)", (DOCS / "alerts.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (DOCS / "alerts_test.yml").read_text()))
    assert rules and rules == tested
