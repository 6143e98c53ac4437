"""A throwaway CA and a server certificate for loopback TLS tests, made by ``tokengate certs``
(the code operators run), so the tests exercise the certificates the project really issues."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from tokengate import certs


def make_ca_and_server(folder: Path, *, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """``(ca.pem, server.pem, server-key.pem)`` in ``folder``; the server certificate names
    ``host`` (an IP address or a DNS name)."""
    folder.mkdir(parents=True, exist_ok=True)
    certs.init_ca(folder, days=1)
    try:
        ips, dns = [str(ipaddress.ip_address(host))], []
    except ValueError:
        ips, dns = [], [host]
    issued = certs.issue(folder, "server", dns=dns, ips=ips, days=1)
    return folder / certs.CA_FILE, issued.cert_path, issued.key_path
