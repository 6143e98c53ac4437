"""The CI entry point runs the project's commands, in order, and fails when any fails."""

from __future__ import annotations

from pathlib import Path

CI = Path(__file__).resolve().parent.parent / ".ci" / "run"


def test_ci_runs_install_check_and_test_in_that_order_and_stops_on_failure() -> None:
    lines = [line.strip() for line in CI.read_text().splitlines()]
    # -e: a failing command fails the run; -o pipefail: even inside a pipeline
    assert "set -euxo pipefail" in lines
    commands = [line for line in lines if line.startswith("scripts/")]
    # the fault scenarios run after the default suite, which leaves them out for its time budget
    assert commands == ["scripts/install", "scripts/check", "scripts/test", "scripts/test-fault"]
    # nothing may swallow a failure of the three (`|| true`, `;` chains, a trailing `&`)
    assert all(line.split() == [line] for line in commands)


def test_both_test_scripts_check_their_coverage_floor_after_pytest() -> None:
    """The floor is checked by `coverage report` itself once pytest is done, so a pytest run
    whose exit status ends well cannot hide a suite under its floor; the fault step checks the
    whole suite's floor over both runs' data."""
    root = CI.parent.parent / "scripts"
    default, fault = (root / "test").read_text(), (root / "test-fault").read_text()
    assert "coverage report" in default and "--cov-fail-under=0" in default
    assert default.index("-m pytest") < default.index("-m coverage report")
    assert "--cov-append" in fault and '--fail-under="$WHOLE_SUITE_FLOOR"' in fault
    assert "WHOLE_SUITE_FLOOR=91.5" in fault
