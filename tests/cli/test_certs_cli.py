"""``tokengate certs init|issue``: the hop's CA and certificates, through the command line."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tokengate.cli import main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


def _usage(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(folder)]) == 0
    return folder


def test_init_makes_a_private_folder_and_a_ca(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "certs"
    old = os.umask(0o022)  # a permissive umask must not leak into the folder or the key
    try:
        assert main(["certs", "init", "--dir", str(folder)]) == 0
    finally:
        os.umask(old)
    assert _mode(folder) == 0o700
    assert _mode(folder / "ca-key.pem") == 0o600
    ca = _cert(folder / "ca.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True and constraints.path_length == 0
    assert sorted(p.name for p in folder.iterdir()) == ["ca-key.pem", "ca.pem"]


def test_init_overwrites_nothing_without_force(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    assert main(["certs", "init", "--dir", str(ca_dir)]) == 1
    assert "--force" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before
    assert main(["certs", "init", "--dir", str(ca_dir), "--force"]) == 0
    assert (ca_dir / "ca-key.pem").read_bytes() != before["ca-key.pem"]
    assert _mode(ca_dir / "ca-key.pem") == 0o600


def test_a_server_certificate_names_exactly_the_hosts_given(ca_dir: Path) -> None:
    args = ["certs", "issue", "--dir", str(ca_dir), "--name", "backend"]
    assert main([*args, "--dns", "backend", "--dns", "backend.internal", "--ip", "10.0.0.7"]) == 0
    cert = _cert(ca_dir / "backend.pem")
    assert _names(cert) == ["backend", "backend.internal", str(ipaddress.ip_address("10.0.0.7"))]
    assert _usage(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(_cert(ca_dir / "ca.pem"))
    assert _mode(ca_dir / "backend-key.pem") == 0o600
    life = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < life <= datetime.timedelta(days=30)


def test_a_client_certificate_has_no_names_unless_given(ca_dir: Path) -> None:
    args = ["certs", "issue", "--dir", str(ca_dir), "--name", "gateway", "--client"]
    assert main([*args, "--days", "3"]) == 0
    cert = _cert(ca_dir / "gateway.pem")
    assert _names(cert) == []
    assert _usage(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    life = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=2) < life <= datetime.timedelta(days=3)
    assert _mode(ca_dir / "gateway-key.pem") == 0o600


def test_nothing_is_added_to_a_server_certificate_by_default(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "issue", "--dir", str(ca_dir), "--name", "bare"]) == 0
    assert _names(_cert(ca_dir / "bare.pem")) == []  # no localhost, no 127.0.0.1, no CN copy
    assert "matches no host name" in capsys.readouterr().err


def test_issue_overwrites_nothing_without_force(ca_dir: Path) -> None:
    args = ["certs", "issue", "--dir", str(ca_dir), "--name", "backend", "--dns", "backend"]
    assert main(args) == 0
    first = (ca_dir / "backend.pem").read_bytes()
    assert main(args) == 1
    assert (ca_dir / "backend.pem").read_bytes() == first
    assert main([*args, "--force"]) == 0
    assert (ca_dir / "backend.pem").read_bytes() != first


@pytest.mark.parametrize(
    "extra",
    [
        ["--dns", "bad host"],
        ["--dns=-lead.example"],
        ["--ip", "10.0.0.300"],
        ["--dns", "b", "--days", "0"],
        ["--dns", "b", "--days", "100000"],
    ],
)
def test_bad_issue_arguments_are_refused(ca_dir: Path, extra: list[str]) -> None:
    assert main(["certs", "issue", "--dir", str(ca_dir), "--name", "backend", *extra]) == 1
    assert not (ca_dir / "backend.pem").exists() and not (ca_dir / "backend-key.pem").exists()


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "ca", "ca-key", "x" * 65])
def test_a_name_is_a_plain_file_name(ca_dir: Path, name: str) -> None:
    assert main(["certs", "issue", "--dir", str(ca_dir), "--name", name, "--client"]) == 1
    assert sorted(p.name for p in ca_dir.parent.iterdir()) == ["certs"]


def test_issue_needs_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "issue", "--dir", str(tmp_path), "--name", "b", "--dns", "b"]) == 1
    assert "certs init" in capsys.readouterr().err
