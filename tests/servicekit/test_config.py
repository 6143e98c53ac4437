"""One report naming every bad variable of a run (issue 23); the URL forms themselves are
checked by servicekit.pg_url and servicekit.redis_url (tests/servicekit/test_store_urls.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from internal_auth import generate_private_key
from servicekit.config import ConfigError, Problems, get_int


def test_problems_gather_every_reader_and_say_each_once() -> None:
    p = Problems()
    env = {"A": "x", "B": "-1"}
    assert p.take(lambda: get_int(env, "A", 1), 7) == 7
    assert p.take(lambda: get_int(env, "B", 1), 7) == 7
    assert p.take(lambda: get_int(env, "A", 1), 7) == 7
    assert p.take(lambda: get_int(env, "C", 3), 7) == 3
    with pytest.raises(ConfigError) as caught:
        p.check()
    assert caught.value.messages == (
        "A must be a whole number, got 'x'",
        "B must be at least 0, got -1",
    )


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
        check=False,
    )


def _one_line_each(done: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit 2, and stderr is one configuration-error line per name, nothing else."""
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert all(line.startswith("tokengate: configuration error: ") for line in lines), lines
    for name in names:
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert len(lines) == len(names) and "Traceback" not in done.stderr


def test_the_gateway_names_every_bad_variable_in_one_run_and_exits_2() -> None:
    done = _run(
        "gateway",
        "--workers",
        "0",
        env={
            "REDIS_URL": "127.0.0.1:6379",
            "DATABASE_URL": "mysql://u:secret-pw@db/x",
            "BACKEND_URL": "http://backend.internal",
            "JWT_ACCESS_SECRET": "too short",
            "JWT_REFRESH_SECRET": "r" * 40,
            "INTERNAL_JWT_PRIVATE_KEY": generate_private_key().private_pem(),
            "DB_POOL_MAX": "many",
            "METRICS_PORT": "99999",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector",
            "LOG_LEVEL": "LOUD",
        },
    )
    _one_line_each(
        done,
        "--workers",
        "JWT_ACCESS_SECRET",
        "DATABASE_URL",
        "REDIS_URL",
        "DB_POOL_MAX",
        "METRICS_PORT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "LOG_LEVEL",
    )
    assert "secret-pw" not in done.stderr


def test_the_backend_names_every_bad_variable_in_one_run_and_exits_2() -> None:
    done = _run(
        "backend",
        env={
            "DATABASE_URL": "postgres//nobody",
            "ARGON2_TIME_COST": "0",
            "ARGON2_MEMORY_KIB": "1",
            "DB_POOL_MIN": "5",
            "DB_POOL_MAX": "2",
            "LOG_FORMAT": "xml",
        },
    )
    _one_line_each(
        done,
        "INTERNAL_JWT_PUBLIC_KEY",
        "DATABASE_URL",
        "ARGON2_TIME_COST",
        "ARGON2_MEMORY_KIB",
        "DB_POOL_MIN",
        "LOG_FORMAT",
    )


def test_an_endpoint_without_opentelemetry_installed_is_a_setting_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # said with every other setting in the parent, not as a traceback from each worker
    from servicekit import otel

    monkeypatch.setattr(otel, "_NEEDED", ("opentelemetry_not_installed_anywhere.trace",))
    with pytest.raises(ConfigError, match="OpenTelemetry is not installed"):
        otel.endpoint_from_env({otel.ENDPOINT: "http://collector:4318"})
