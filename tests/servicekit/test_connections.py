"""servicekit.connections: the six connection settings, the descriptor budget, and what uvicorn is
handed. The limits themselves are attacked on real processes in
``tests/e2e/test_connection_limits_e2e.py``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from internal_auth import generate_private_key
from servicekit.config import ConfigError
from servicekit.connections import (
    BACKEND_DEFAULTS,
    ConnectionLimits,
    descriptor_budget,
    uvicorn_options,
)
from servicekit.connections.protocol import LimitedHttpToolsProtocol

from backend.settings import Settings as BackendSettings
from gateway.settings import Settings as GatewaySettings


@pytest.fixture(scope="module")
def environs() -> tuple[dict[str, str], dict[str, str]]:
    """Valid gateway and backend environments (settings are read, nothing is connected)."""
    key = generate_private_key()
    gateway = {
        "DATABASE_URL": "postgresql://gateway@db.internal/tokengate",
        "REDIS_URL": "redis://redis.internal:6379/0",
        "BACKEND_URL": "http://backend.internal",
        "JWT_ACCESS_SECRET": "a" * 32,
        "JWT_REFRESH_SECRET": "r" * 32,
        "INTERNAL_JWT_PRIVATE_KEY": key.private_pem(),
    }
    backend = {
        "DATABASE_URL": "postgresql://backend@db.internal/tokengate",
        "INTERNAL_JWT_PUBLIC_KEY": key.public_pem(),
    }
    return gateway, backend


def test_defaults_are_edge_grade() -> None:
    limits = ConnectionLimits.from_env({})
    assert limits == ConnectionLimits()
    assert limits.max_request_head_bytes == 16384
    assert limits.max_request_headers == 100
    assert limits.max_request_line_bytes == 8192
    assert limits.request_head_timeout <= 60  # nginx's client_header_timeout
    assert limits.keep_alive_timeout == 5
    assert limits.max_connections >= 1024  # well above the backend pool's 256


def test_every_variable_is_read() -> None:
    limits = ConnectionLimits.from_env(
        {
            "MAX_REQUEST_HEAD_BYTES": "4096",
            "MAX_REQUEST_HEADERS": "20",
            "MAX_REQUEST_LINE_BYTES": "1024",
            "REQUEST_HEAD_TIMEOUT": "1.5",
            "KEEP_ALIVE_TIMEOUT": "75",
            "MAX_CONNECTIONS": "5000",
        }
    )
    assert limits == ConnectionLimits(4096, 20, 1024, 1.5, 75, 5000)


def test_every_bad_variable_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        ConnectionLimits.from_env(
            {
                "MAX_REQUEST_HEAD_BYTES": "10",
                "MAX_REQUEST_HEADERS": "many",
                "MAX_REQUEST_LINE_BYTES": "1",
                "REQUEST_HEAD_TIMEOUT": "0",
                "KEEP_ALIVE_TIMEOUT": "-1",
                "MAX_CONNECTIONS": "0",
            }
        )
    for name in (
        "MAX_REQUEST_HEAD_BYTES",
        "MAX_REQUEST_HEADERS",
        "MAX_REQUEST_LINE_BYTES",
        "REQUEST_HEAD_TIMEOUT",
        "KEEP_ALIVE_TIMEOUT",
        "MAX_CONNECTIONS",
    ):
        assert name in str(caught.value)


def test_a_request_line_longer_than_the_head_is_refused() -> None:
    with pytest.raises(ConfigError, match="MAX_REQUEST_LINE_BYTES"):
        ConnectionLimits.from_env(
            {"MAX_REQUEST_HEAD_BYTES": "4096", "MAX_REQUEST_LINE_BYTES": "8192"}
        )


def test_both_services_read_them_and_the_backend_takes_the_gateways_heads_plus_its_own(
    environs: tuple[dict[str, str], dict[str, str]],
) -> None:
    gateway_environ, backend_environ = environs
    gateway = GatewaySettings.from_env({**gateway_environ, "MAX_CONNECTIONS": "77"})
    assert gateway.connections.max_connections == 77
    backend = BackendSettings.from_env({**backend_environ, "MAX_CONNECTIONS": "78"})
    assert backend.connections.max_connections == 78
    # what the gateway accepts at its limit, plus its internal token and its own fields
    assert (
        backend.connections.max_request_head_bytes
        >= gateway.connections.max_request_head_bytes + 4096
    )
    assert backend.connections.max_request_headers > gateway.connections.max_request_headers
    assert BackendSettings.from_env(backend_environ).connections == BACKEND_DEFAULTS


def test_the_descriptor_budget_holds_every_connection_twice_and_the_pools() -> None:
    limits = ConnectionLimits(max_connections=1024)
    assert descriptor_budget(limits, 256 + 10 + 8) == 2048 + 274 + 64


def test_uvicorn_gets_the_protocol_bound_to_the_limits_in_a_form_workers_can_unpickle() -> None:
    limits = ConnectionLimits(max_connections=3)
    options = uvicorn_options(limits)
    assert options["timeout_keep_alive"] == limits.keep_alive_timeout
    factory = pickle.loads(pickle.dumps(options["http"]))  # what --workers N spawns with
    assert factory.func is LimitedHttpToolsProtocol
    assert factory.keywords == {"limits": limits}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_a_low_soft_descriptor_limit_is_raised_and_a_low_hard_one_stops_start_up() -> None:
    # In a child process: lowering a hard limit cannot be undone.
    done = _run(
        """
        import resource
        from servicekit.config import ConfigError
        from servicekit.connections import ensure_descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 400))
        assert ensure_descriptors(300) == 300
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (300, 400)
        assert ensure_descriptors(200) == 300  # never lowered
        try:
            ensure_descriptors(500)
        except ConfigError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "MAX_CONNECTIONS" in done.stdout and "400" in done.stdout


@pytest.mark.parametrize("service", ["gateway", "backend"])
def test_a_service_refuses_to_start_with_too_few_descriptors_for_its_cap(
    environs: tuple[dict[str, str], dict[str, str]], service: str
) -> None:
    environ = environs[0] if service == "gateway" else environs[1]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
            f"from tokengate.cli import main; sys.exit(main(['{service}', '--port', '1']))",
        ],
        env={**os.environ, **environ, "MAX_CONNECTIONS": "1024"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "MAX_CONNECTIONS" in done.stderr
