"""Certificates for the internal hop over mutual TLS, made with ``tokengate certs``: a CA, the
backend's server certificate and the gateway's client certificate, laid out as ``tokengate dev``
lays them out (:class:`tokengate.dev.HopCertificates`), plus client contexts for the tests."""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.proxy.tls import client_context
from tokengate import certs
from tokengate.dev import HopCertificates


class HopTLS(HopCertificates):
    @classmethod
    def issue(
        cls, folder: Path, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",)
    ) -> HopTLS:
        certs.init_ca(folder)
        certs.issue(folder, "backend", dns=list(dns), ips=list(ips))
        certs.issue(folder, "gateway", client=True)
        return cls(folder)

    def client(self, name: str | None = "gateway") -> ssl.SSLContext:
        """A context that trusts this CA and presents ``name``'s certificate (none: ``None``)."""
        if name is None:
            return client_context(self.ca)
        return client_context(self.ca, self.cert(name), self.key(name))
