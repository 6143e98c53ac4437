"""``tokengate keys rotate`` and ``keys status``: each step refused until it is safe, ``--force``
to skip the wait, atomic private writes, and which services know each key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from internal_auth import SigningKey, SigningKeys, generate_private_key, write_key_file
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from tests.support.document_server import DocumentServer, document_server

FAST = {
    "INTERNAL_JWKS_MAX_AGE": "1",
    "INTERNAL_JWKS_COOLDOWN": "0.1",
    "GATEWAY_CONFIG_RELOAD_INTERVAL": "0.1",
    "INTERNAL_TOKEN_TTL": "1",
    "INTERNAL_TOKEN_LEEWAY": "0",
}


def keys_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INTERNAL_")}
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "keys", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "internal_jwt_private_keys.pem"
    path.write_text(generate_private_key().private_pem())  # a bare key: valid, and it signs
    path.chmod(0o600)
    return path


def roles(path: Path) -> dict[str, str]:
    return {k.role: k.kid for k in SigningKeys.parse(path.read_text())}


def test_stage_promote_retire_with_the_waits_enforced(key_file: Path) -> None:
    first = roles(key_file)["active"]
    staged = keys_cli("rotate", "--file", str(key_file), "--stage", env=FAST)
    assert staged.returncode == 0, staged.stderr
    upcoming = roles(key_file)["next"]
    assert roles(key_file)["active"] == first and upcoming != first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # too early: a service may not know the staged key yet
    early = keys_cli(
        "rotate", "--file", str(key_file), "--promote", env={**FAST, "INTERNAL_JWKS_MAX_AGE": "60"}
    )
    assert early.returncode == 1
    assert "INTERNAL_JWKS_MAX_AGE + INTERNAL_JWKS_COOLDOWN" in early.stderr
    assert roles(key_file)["active"] == first  # nothing written

    next_key = SigningKeys.parse(key_file.read_text()).role("next")
    assert next_key is not None and next_key.staged is not None
    staged_at = next_key.staged
    # past INTERNAL_JWKS_MAX_AGE + INTERNAL_JWKS_COOLDOWN of FAST (1.1 s) since the stage
    time.sleep(max(0.0, staged_at + 2.0 - time.time()))
    later = keys_cli("rotate", "--file", str(key_file), "--promote", env=FAST)
    assert later.returncode == 0, later.stderr
    assert roles(key_file) == {"active": upcoming, "previous": first}

    early_retire = keys_cli(
        "rotate", "--file", str(key_file), "--retire", env={**FAST, "INTERNAL_TOKEN_TTL": "60"}
    )
    assert early_retire.returncode == 1 and "INTERNAL_TOKEN_TTL" in early_retire.stderr
    forced = keys_cli("rotate", "--file", str(key_file), "--retire", "--force", env=FAST)
    assert forced.returncode == 0, forced.stderr
    assert roles(key_file) == {"active": upcoming}


def test_every_step_can_be_forced_in_a_row(key_file: Path) -> None:
    env = {"INTERNAL_JWT_PRIVATE_KEYS_FILE": str(key_file)}  # the file from the services' variable
    for step in ("--stage", "--promote", "--retire"):
        done = keys_cli("rotate", step, "--force", env=env)
        assert done.returncode == 0, (step, done.stderr)
    assert list(roles(key_file)) == ["active"]


@pytest.mark.parametrize(
    ("step", "message"),
    [("--promote", "no next key"), ("--retire", "no previous key")],
)
def test_a_step_with_nothing_to_act_on_is_refused(key_file: Path, step: str, message: str) -> None:
    done = keys_cli("rotate", "--file", str(key_file), step, "--force")
    assert done.returncode == 1 and message in done.stderr


def test_staging_twice_and_promoting_over_a_previous_key_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    write_key_file(
        path,
        SigningKeys(
            (
                SigningKey(generate_private_key(), "active", staged=1.0, promoted=2.0),
                SigningKey(generate_private_key(), "previous"),
                SigningKey(generate_private_key(), "next", staged=3.0),
            )
        ),
    )
    assert "already staged" in keys_cli("rotate", "--file", str(path), "--stage").stderr
    refused = keys_cli("rotate", "--file", str(path), "--promote", "--force")
    assert refused.returncode == 1 and "retire it first" in refused.stderr


def test_a_missing_or_broken_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    missing = keys_cli("rotate", "--file", str(tmp_path / "nope.pem"), "--stage")
    assert missing.returncode == 2 and "nope.pem" in missing.stderr
    broken = tmp_path / "broken.pem"
    broken.write_text("role: boss\n" + generate_private_key().private_pem())
    assert keys_cli("rotate", "--file", str(broken), "--stage").returncode == 2
    nothing = keys_cli("rotate", "--stage")
    assert nothing.returncode == 2 and "INTERNAL_JWT_PRIVATE_KEYS_FILE" in nothing.stderr


@pytest.fixture
def service_metrics() -> Iterator[DocumentServer]:
    with document_server() as server:
        yield server


def test_status_lists_roles_and_which_services_know_each_kid(
    key_file: Path, service_metrics: DocumentServer
) -> None:
    assert keys_cli("rotate", "--file", str(key_file), "--stage").returncode == 0
    current = roles(key_file)
    registry = CollectorRegistry()
    gauge = Gauge("tokengate_backend_internal_jwks_keys", "kids", ["kid"], registry=registry)
    gauge.labels(current["active"]).set(1)
    gauge.labels(current["next"]).set(0)  # known before, dropped since
    service_metrics.documents["/metrics"] = generate_latest(registry)
    down = "http://127.0.0.1:9/metrics"
    done = keys_cli(
        "status",
        "--file",
        str(key_file),
        "--metrics",
        service_metrics.url + "/metrics",
        "--metrics",
        down,
    )
    assert done.returncode == 3  # one service unreachable
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:3]}
    assert lines[current["active"]][1:2] == ["active"]
    assert lines[current["active"]][-2:] == ["known", "unreachable"]
    assert lines[current["next"]][1] == "next"
    assert lines[current["next"]][-2:] == ["unknown", "unreachable"]
    assert "service 2: " + down in done.stdout
