"""A service's listener TLS (``--ssl-*``): validated in the parent before any worker starts,
client certificates required as soon as a CA is given, every file loaded once and named."""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from servicekit import tls
from servicekit.config import ConfigError

from tests.support.hop_tls import HopTLS, memory_handshake


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory) -> HopTLS:
    return HopTLS.issue(tmp_path_factory.mktemp("hop"))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tls.add_server_arguments(parser)
    return parser.parse_args(argv)


def test_no_certificate_is_plain_http() -> None:
    assert tls.ServerTLS.from_args(_args()) is None


def test_a_ca_means_client_certificates_are_required(hop: HopTLS) -> None:
    server = tls.ServerTLS.from_args(
        _args(
            "--ssl-certfile",
            hop.cert("backend"),
            "--ssl-keyfile",
            hop.key("backend"),
            "--ssl-ca-certs",
            hop.ca,
        )
    )
    assert server is not None and server.cert_reqs == "required"
    options = server.uvicorn_options("backend")
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED and options["ssl_ca_certs"] == hop.ca


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("--ssl-keyfile", "k.pem"), "--ssl-certfile"),
        (("--ssl-ca-certs", "ca.pem", "--ssl-cert-reqs", "required"), "--ssl-certfile"),
        (
            ("--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-cert-reqs", "required"),
            "--ssl-ca-certs",
        ),
        (("--ssl-certfile", "/nonexistent.pem"), "--ssl-certfile"),
        (("--ssl-certfile", "{cert}", "--ssl-keyfile", "{other_key}"), "--ssl-certfile"),
        (
            ("--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-ca-certs", "{key}"),
            "--ssl-ca-certs",
        ),
    ],
)
def test_bad_flags_are_named(hop: HopTLS, argv: tuple[str, ...], named: str) -> None:
    values = {
        "cert": hop.cert("backend"),
        "key": hop.key("backend"),
        "other_key": hop.key("gateway"),
    }
    with pytest.raises(ConfigError, match=named) as caught:
        tls.ServerTLS.from_args(_args(*(a.format(**values) for a in argv)))
    assert "PRIVATE KEY" not in str(caught.value)


def test_the_backend_command_exits_2_before_any_worker(hop: HopTLS, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokengate.cli",
            "backend",
            "--workers",
            "2",
            "--ssl-certfile",
            hop.cert("backend"),
            "--ssl-cert-reqs",
            "required",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--ssl-ca-certs" in done.stderr, done.stderr


def test_refused_handshakes_are_counted_by_reason(hop: HopTLS) -> None:
    """In memory, no socket: a server context from the factory refusing a client that presents
    no certificate counts ``no_certificate`` (the e2e tests do it over loopback)."""

    def default() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(hop.cert("backend"), hop.key("backend"))
        context.load_verify_locations(hop.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    # workers=2: no SIGHUP handler in this process (that is the single-worker reload)
    config = argparse.Namespace(ssl_certfile=hop.cert("backend"), ssl_keyfile=None, workers=2)
    server = tls.server_context(config, default, service="unit")
    counter = tls.HANDSHAKE_FAILURES.labels("unit", "no_certificate")
    before = counter._value.get()
    with pytest.raises(ssl.SSLError):
        memory_handshake(hop.client(None), server, "127.0.0.1")
    assert counter._value.get() == before + 1
    assert tls.reason_of(ssl.SSLError()) == "other"


def test_a_reload_takes_a_good_pair_and_keeps_the_old_one_over_a_bad_one(
    hop: HopTLS, tmp_path: Path
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(hop.cert("backend"), hop.key("backend"))
    broken = tmp_path / "half.pem"
    broken.write_text(Path(hop.cert("backend")).read_text()[:200])
    assert not tls.reload_certificate(context, str(broken), hop.key("backend"), "unit")
    # the mismatched pair (the gateway's key) is refused too, and the context still serves
    assert not tls.reload_certificate(context, hop.cert("backend"), hop.key("gateway"), "unit")
    client_side, _ = memory_handshake(hop.client(None), context, "127.0.0.1")
    assert client_side.getpeercert() is not None
    assert tls.reload_certificate(context, hop.cert("backend"), hop.key("backend"), "unit")
