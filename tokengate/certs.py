"""``tokengate certs init|issue``: a private CA for the internal hop, and its certificates.

``init --dir DIR`` makes the CA (``DIR/ca.pem``, ``DIR/ca-key.pem``); ``issue --dir DIR --name
NAME`` makes a server certificate (``DIR/NAME.pem``, ``DIR/NAME-key.pem``) that names exactly the
hosts given with ``--dns`` and ``--ip``, or with ``--client`` a client certificate for mutual TLS.
Keys are ECDSA P-256 (a cheap handshake, understood by every TLS 1.2 and 1.3 stack).

Nothing is overwritten without ``--force``; DIR is made mode 0700 if missing; every private key
is written mode 0600, and every file is written to a temporary name and renamed into place, so a
reader never sees half a file. (The key is renamed before its certificate: re-issue first, then
reload the service, as the README's rotation steps say.)
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokengate.files import write_atomic

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
DEFAULT_DAYS = 30
DEFAULT_CA_DAYS = 3650
# 825 days: the longest leaf lifetime the CA/Browser Forum ever allowed; anything longer is a
# typo here, and short lives are the point (the expiry alert fires 14 days ahead).
MAX_DAYS = 825
MAX_CA_DAYS = 36500
MAX_NAMES = 100
# a file name, not a path: no separator, no leading dot, bounded
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# RFC 1123 host names (and one leading wildcard label); checked so SAN holds what DNS can match
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")


class CertsError(Exception):
    """A refusal with a message for the operator (exit 1); nothing was written."""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    certs = sub.add_parser("certs", help="a private CA and certificates for the internal hop")
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create the CA (DIR/ca.pem, DIR/ca-key.pem)")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--days", type=int, default=DEFAULT_CA_DAYS, help="CA lifetime (days)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)
    issue = actions.add_parser(
        "issue", help="issue DIR/NAME.pem and DIR/NAME-key.pem, signed by the CA in DIR"
    )
    issue.add_argument("--dir", type=Path, required=True)
    issue.add_argument("--name", required=True, help="file name and certificate common name")
    issue.add_argument("--dns", action="append", default=[], help="a host name (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="an IP address (repeatable)")
    issue.add_argument("--client", action="store_true", help="a client certificate (mutual TLS)")
    issue.add_argument("--days", type=int, default=DEFAULT_DAYS, help="lifetime (default 30)")
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.set_defaults(func=_issue)


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _prepare_dir(folder: Path) -> None:
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    elif not folder.is_dir():
        raise CertsError(f"{folder} is not a folder")


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        raise CertsError(f"{', '.join(existing)} exist(s); --force replaces")


def _check_days(days: int, maximum: int) -> None:
    if not 1 <= days <= maximum:
        raise CertsError(f"--days must be between 1 and {maximum}, got {days}")


def _key_usage(*, ca: bool) -> Any:
    """A CA signs certificates (and CRLs) only; a leaf signs handshakes only (ECDHE with an
    ECDSA key: digitalSignature, RFC 5480 §3)."""
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def init_ca(folder: Path, *, days: int = DEFAULT_CA_DAYS, force: bool = False) -> Issued:
    """Create the CA in ``folder``: a self-signed certificate that may sign leaf certificates
    only (path length 0), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    _check_days(days, MAX_CA_DAYS)
    _prepare_dir(folder)
    cert_path, key_path = folder / CA_FILE, folder / CA_KEY_FILE
    _refuse_existing([cert_path, key_path], force)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokengate internal CA")])
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    # the key first: a CA certificate without its key on disk would be a CA nobody can use
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(cert_path, _cert_pem(cert), 0o644)
    return Issued(cert_path, key_path)


def _load_ca(folder: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = folder / CA_FILE, folder / CA_KEY_FILE
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CertsError(f"no CA in {folder}: run 'tokengate certs init --dir {folder}'") from None
    except (ValueError, TypeError):
        raise CertsError(f"{cert_path} or {key_path} is not a PEM certificate and key") from None
    if cert.public_key() != key.public_key():
        raise CertsError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _alt_names(dns: list[str], ips: list[str]) -> list[Any]:
    from cryptography import x509

    if len(dns) + len(ips) > MAX_NAMES:
        raise CertsError(f"at most {MAX_NAMES} --dns and --ip names")
    names: list[Any] = []
    for host in dns:
        if len(host) > 253 or not _HOST.fullmatch(host):
            raise CertsError(f"--dns {host!r} is not a host name")
        names.append(x509.DNSName(host.lower()))
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertsError(f"--ip {ip!r} is not an IP address") from None
    return names


def issue(
    folder: Path,
    name: str,
    *,
    dns: list[str] | tuple[str, ...] = (),
    ips: list[str] | tuple[str, ...] = (),
    client: bool = False,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> Issued:
    """Issue ``folder/name.pem`` and ``folder/name-key.pem``, signed by the CA in ``folder``.

    The subject alternative names are exactly ``dns`` and ``ips``, nothing added: a server
    certificate without any matches no host name (clients that check names, the gateway among
    them, refuse it; the command warns), a client certificate needs none. A server certificate
    is good for ``serverAuth`` only and a client one for ``clientAuth`` only, so neither can
    stand in for the other.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not _NAME.fullmatch(name) or name in {"ca", "ca-key"}:
        raise CertsError(
            f"--name {name!r}: letters, digits, '.', '_', '-' (not ca, ca-key), 64 at most"
        )
    _check_days(days, MAX_DAYS)
    alt = _alt_names(list(dns), list(ips))
    ca_cert, ca_key = _load_ca(folder)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _refuse_existing([cert_path, key_path], force)
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = _new_key()
    public = key.public_key()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
            critical=False,
        )
    )
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(cert_path, _cert_pem(cert), 0o644)
    return Issued(cert_path, key_path)


def _report(issued: Issued) -> None:
    print(f"{issued.cert_path}\n{issued.key_path}")


def _init(args: argparse.Namespace) -> int:
    try:
        issued = init_ca(args.dir, days=args.days, force=args.force)
    except (CertsError, OSError) as exc:
        print(f"tokengate certs init: {_message(exc)}", file=sys.stderr)
        return 1
    _report(issued)
    return 0


def _issue(args: argparse.Namespace) -> int:
    try:
        issued = issue(
            args.dir,
            args.name,
            dns=args.dns,
            ips=args.ip,
            client=args.client,
            days=args.days,
            force=args.force,
        )
    except (CertsError, OSError) as exc:
        print(f"tokengate certs issue: {_message(exc)}", file=sys.stderr)
        return 1
    if not args.client and not args.dns and not args.ip:
        print(
            "tokengate certs issue: warning: a server certificate without --dns or --ip matches"
            " no host name; clients that check names (the gateway does) will refuse it",
            file=sys.stderr,
        )
    _report(issued)
    return 0


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return str(exc)
