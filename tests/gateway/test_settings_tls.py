"""The hop's TLS settings: an https:// backend needs its own CA, files are loaded at start-up
and a bad one is named, and the context trusts that CA only."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from servicekit.config import ConfigError

from gateway.proxy.tls import client_context
from gateway.proxy.upstream import UpstreamPool
from gateway.settings import Settings
from tests.support.hop_tls import HopTLS


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory) -> HopTLS:
    return HopTLS.issue(tmp_path_factory.mktemp("hop"), dns=("backend.internal",), ips=())


def test_an_https_backend_without_a_ca_file_refuses_to_start(env: dict[str, str]) -> None:
    # it used the system store until now: any public CA could issue the backend's name
    with pytest.raises(ConfigError, match="BACKEND_CA_FILE"):
        Settings.from_env({**env, "BACKEND_URL": "https://backend.internal"})


def test_mutual_tls_settings_are_read(env: dict[str, str], hop: HopTLS) -> None:
    settings = Settings.from_env(
        {**env, "BACKEND_URL": "https://backend.internal", **hop.gateway_env()}
    )
    assert settings.backend_ca_file == hop.ca
    assert settings.backend_client_cert_file == hop.cert("gateway")
    assert settings.backend_client_key_file == hop.key("gateway")
    # CA only (server-authenticated TLS) is accepted too
    only_ca = Settings.from_env({**env, "BACKEND_URL": "https://b", "BACKEND_CA_FILE": hop.ca})
    assert only_ca.backend_client_cert_file is None


def test_tls_files_with_a_plain_http_url_are_refused(env: dict[str, str], hop: HopTLS) -> None:
    with pytest.raises(ConfigError, match=r"BACKEND_CA_FILE.*not https"):
        Settings.from_env({**env, **hop.gateway_env()})


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"BACKEND_CA_FILE": "/nonexistent/ca.pem"}, "BACKEND_CA_FILE"),
        ({"BACKEND_CLIENT_CERT_FILE": ""}, "BACKEND_CLIENT_KEY_FILE"),
        ({"BACKEND_CLIENT_KEY_FILE": "ca-key"}, "BACKEND_CLIENT_CERT_FILE"),
    ],
)
def test_a_bad_tls_file_is_named(
    env: dict[str, str], hop: HopTLS, override: dict[str, str], named: str
) -> None:
    values = {**hop.gateway_env(), **override}
    if values.get("BACKEND_CLIENT_KEY_FILE") == "ca-key":
        values["BACKEND_CLIENT_KEY_FILE"] = hop.key("backend")  # not the certificate's key
    with pytest.raises(ConfigError, match=named) as caught:
        Settings.from_env({**env, "BACKEND_URL": "https://b", **values})
    assert "PRIVATE KEY" not in str(caught.value)


def test_a_ca_file_without_a_certificate_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(ConfigError, match="BACKEND_CA_FILE"):
        Settings.from_env({**env, "BACKEND_URL": "https://b", "BACKEND_CA_FILE": str(empty)})


def test_the_context_trusts_the_services_ca_only(hop: HopTLS) -> None:
    context = client_context(hop.ca, hop.cert("gateway"), hop.key("gateway"))
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "tokengate internal CA"),),)
    ]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_pool_refuses_an_https_origin_without_a_context() -> None:
    async def build() -> None:
        UpstreamPool(
            "https://backend.internal", connect_timeout=1, read_timeout=1, acquire_timeout=1
        )

    with pytest.raises(ValueError, match="TLS context"):
        asyncio.run(build())


def test_the_gateway_command_exits_2_naming_the_variable(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "gateway", "--port", "1"],
        env={**env, "BACKEND_URL": "https://backend.internal", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "BACKEND_CA_FILE" in done.stderr, done.stderr
