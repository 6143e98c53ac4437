"""Every metric selector in the alert rules names the job it is about (no promtool needed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOCS = Path(__file__).resolve().parents[2] / "docs" / "prometheus"
SELECTOR = re.compile(r"\b(tokengate_(gateway|backend)_[a-z_]+)(\{[^}]*\})?")


def test_every_selector_selects_its_services_job() -> None:
    jobs = {
        job["job_name"]
        for job in yaml.safe_load((DOCS / "prometheus.yml").read_text())["scrape_configs"]
    }
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    found = 0
    for expr in exprs:
        for name, service, labels in SELECTOR.findall(expr):
            found += 1
            job = f'job="tokengate-{service}"'
            # a family of one service, selected on that service's targets only
            assert job in labels, f"{name} in {expr!r} has no {job}"
            assert f"tokengate-{service}" in jobs
    assert found >= 4
