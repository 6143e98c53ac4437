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


def memory_handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A whole TLS handshake between two contexts through memory, no socket: the client and
    server objects once both sides finished; the first side's refusal is raised as is."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    sides = [
        (client.wrap_bio(c_in, c_out, server_hostname=hostname), c_out, s_in),
        (server.wrap_bio(s_in, s_out, server_side=True), s_out, c_in),
    ]
    done = [False, False]
    for _ in range(10):
        for i, (side, outgoing, peer) in enumerate(sides):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer.write(outgoing.read())
        if all(done):
            return sides[0][0], sides[1][0]
    raise AssertionError("the handshake did not finish in 10 rounds")
