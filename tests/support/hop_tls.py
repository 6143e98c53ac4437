"""Certificates for the internal hop over mutual TLS, made with ``tokengate certs`` code: a CA,
the backend's server certificate, the gateway's client certificate, and whatever else a test
needs (another CA, a certificate for another host name)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.proxy.tls import client_context
from tokengate import certs


@dataclass(frozen=True)
class HopTLS:
    folder: Path

    @classmethod
    def issue(
        cls, folder: Path, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",)
    ) -> HopTLS:
        certs.init_ca(folder)
        certs.issue(folder, "backend", dns=list(dns), ips=list(ips))
        certs.issue(folder, "gateway", client=True)
        return cls(folder)

    @property
    def ca(self) -> str:
        return str(self.folder / "ca.pem")

    def cert(self, name: str) -> str:
        return str(self.folder / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.folder / f"{name}-key.pem")

    def backend_args(self) -> tuple[str, ...]:
        return (
            "--ssl-certfile",
            self.cert("backend"),
            "--ssl-keyfile",
            self.key("backend"),
            "--ssl-ca-certs",
            self.ca,
            "--ssl-cert-reqs",
            "required",
        )

    def gateway_env(self) -> dict[str, str]:
        return {
            "BACKEND_CA_FILE": self.ca,
            "BACKEND_CLIENT_CERT_FILE": self.cert("gateway"),
            "BACKEND_CLIENT_KEY_FILE": self.key("gateway"),
        }

    def client(self, name: str | None = "gateway") -> ssl.SSLContext:
        """A context that trusts this CA and presents ``name``'s certificate (none: ``None``)."""
        if name is None:
            return client_context(self.ca)
        return client_context(self.ca, self.cert(name), self.key(name))
