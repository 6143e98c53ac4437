"""TLS on the internal hop, the parts both services share: a service's listener over (mutual)
TLS, the count of refused handshakes, and the expiry gauge of the certificate a process serves
or presents.

The server side is uvicorn's: ``tokengate backend --ssl-certfile --ssl-keyfile [--ssl-ca-certs
--ssl-cert-reqs required]`` become uvicorn's options, and :func:`server_context` is its
``ssl_context_factory`` (each worker builds its context from the files when it starts, so a
worker started after the files changed serves the new certificate: see the README on rotation).
The factory adds what uvicorn's own context leaves out: TLS 1.2 at least, and a count of every
handshake the server refused (no client certificate, one from another CA, plain HTTP on the TLS
port), through the ``sslobject_class`` hook of :class:`ssl.SSLContext` (every TLS connection of
asyncio and uvloop is an :class:`ssl.SSLObject` from ``wrap_bio``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from servicekit.config import ConfigError
from servicekit.logs import log_event

logger = logging.getLogger("servicekit.tls")

# In no registry here: each service registers them in its own (gateway.metrics.REGISTRY,
# backend.metrics.REGISTRY), the one its metrics listener serves.
HANDSHAKE_FAILURES = Counter(
    "tokengate_tls_handshake_failures_total",
    "TLS handshakes a service refused on its internal listener, by reason.",
    ["service", "reason"],
    registry=None,
)
CERT_EXPIRY = Gauge(
    "tokengate_tls_certificate_expiry_seconds",
    "Seconds until the notAfter of the certificate a process serves (role=server) or presents "
    "(role=client) on the internal hop (lowest over workers).",
    ["service", "role"],
    multiprocess_mode="livemin",
    registry=None,
)

# OpenSSL's reason codes, mapped to a bounded label set (a client chooses what it sends).
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_certificate",
    "CERTIFICATE_VERIFY_FAILED": "untrusted_certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "untrusted_certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "untrusted_certificate",
    "HTTP_REQUEST": "plaintext",
    "WRONG_VERSION_NUMBER": "plaintext",
    "UNSUPPORTED_PROTOCOL": "old_protocol",
    "TLSV1_ALERT_PROTOCOL_VERSION": "old_protocol",
}
REASONS = frozenset({*_REASONS.values(), "other"})

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

#: (service, role) -> the notAfter (Unix seconds) of the certificate this process loaded
_expiries: dict[tuple[str, str], float] = {}


def reason_of(exc: ssl.SSLError) -> str:
    # an SSLError built without OpenSSL (as some wrappers raise it) has no reason at all
    return _REASONS.get(str(getattr(exc, "reason", None) or ""), "other")


class _CountedSSLObject(ssl.SSLObject):
    """An SSLObject that counts the handshakes it refuses (``service`` set per subclass)."""

    service = "service"

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not a failure: the handshake waits for more bytes
        except ssl.SSLError as exc:
            HANDSHAKE_FAILURES.labels(self.service, reason_of(exc)).inc()
            raise


@functools.cache
def _counted_class(service: str) -> type[ssl.SSLObject]:
    return type(f"CountedSSLObject_{service}", (_CountedSSLObject,), {"service": service})


def certificate_not_after(path: str) -> float:
    """The notAfter (Unix seconds) of the first certificate in the PEM file at ``path``."""
    from cryptography import x509

    with open(path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    return cert.not_valid_after_utc.timestamp()


def watch_expiry(service: str, role: str, path: str) -> None:
    """Report the certificate at ``path`` in the expiry gauge (:func:`sample_expiry`)."""
    _expiries[(service, role)] = certificate_not_after(path)
    sample_expiry()


def sample_expiry(now: float | None = None) -> None:
    """Set every watched certificate's gauge to the seconds left until its notAfter."""
    now = time.time() if now is None else now
    for (service, role), not_after in _expiries.items():
        CERT_EXPIRY.labels(service, role).set(not_after - now)


async def expiry_sampler(interval: float = 30.0) -> None:
    """:func:`sample_expiry` every ``interval`` seconds (a service's lifespan runs it)."""
    while True:
        sample_expiry()
        await asyncio.sleep(interval)


def harden(context: ssl.SSLContext, service: str) -> ssl.SSLContext:
    """TLS 1.2 at least (RFC 8996 retired 1.0 and 1.1) and every refused handshake counted."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslobject_class = _counted_class(service)
    return context


def server_context(
    config: Any, default_factory: Callable[[], ssl.SSLContext], *, service: str
) -> ssl.SSLContext:
    """uvicorn's ``ssl_context_factory``: its context from the files, hardened and counted.

    Runs in each worker as it starts (uvicorn's ``Config.load``), so the expiry gauge shows the
    certificate that worker serves, not whatever is on disk now.
    """
    context = harden(default_factory(), service)
    watch_expiry(service, "server", str(config.ssl_certfile))
    if getattr(config, "workers", 1) in (None, 1):
        # one process: no supervisor to restart workers on SIGHUP (uvicorn's single server
        # handles only SIGINT and SIGTERM, and SIGHUP would end it), so reload in place
        certfile, keyfile = str(config.ssl_certfile), config.ssl_keyfile
        signal.signal(
            signal.SIGHUP,
            lambda signum, frame: reload_certificate(context, certfile, keyfile, service),
        )
    return context


def reload_certificate(
    context: ssl.SSLContext, certfile: str, keyfile: str | None, service: str
) -> bool:
    """Load the certificate and key again into the live ``context``: handshakes from now on
    present them, connections already open keep theirs (OpenSSL copies the certificate into each
    connection). The files are tried on a scratch context first, so a bad or half-written pair
    leaves the old one serving; ``False`` then, and the expiry gauge keeps the old date."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_cert_chain(certfile, keyfile)
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        log_event(logger, "certificate_reload_failed", logging.ERROR, error=type(exc).__name__)
        return False
    watch_expiry(service, "server", certfile)
    log_event(logger, "certificate_reloaded")
    return True


@dataclass(frozen=True)
class ServerTLS:
    """A service's listener TLS settings, from its command line (``--ssl-*``)."""

    certfile: str
    keyfile: str | None = None
    ca_certs: str | None = None
    cert_reqs: str = "none"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerTLS | None:
        """Validated once in the parent, before any worker starts; ``None`` for plain HTTP."""
        certfile, keyfile, ca_certs = args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs
        reqs = args.ssl_cert_reqs
        if certfile is None:
            given = [
                flag
                for flag, value in (
                    ("--ssl-keyfile", keyfile),
                    ("--ssl-ca-certs", ca_certs),
                    ("--ssl-cert-reqs", reqs),
                )
                if value is not None
            ]
            if given:
                raise ConfigError(f"{', '.join(given)} need --ssl-certfile")
            return None
        # fail closed: a CA given for client certificates means they are required unless the
        # operator explicitly says otherwise
        if reqs is None:
            reqs = "required" if ca_certs else "none"
        if reqs != "none" and not ca_certs:
            raise ConfigError(f"--ssl-cert-reqs {reqs} needs --ssl-ca-certs (the clients' CA)")
        tls = cls(certfile=certfile, keyfile=keyfile, ca_certs=ca_certs, cert_reqs=reqs)
        tls.check()
        return tls

    def check(self) -> None:
        """Load every file once, naming the flag whose file is bad (never its content)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            detail = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            raise ConfigError(
                f"--ssl-certfile/--ssl-keyfile: cannot load the certificate and key ({detail})"
            ) from None
        if self.ca_certs:
            try:
                context.load_verify_locations(cafile=self.ca_certs)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"--ssl-ca-certs: cannot load the CA file ({type(exc).__name__})"
                ) from None

    def uvicorn_options(self, service: str) -> dict[str, Any]:
        return {
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_ca_certs": self.ca_certs,
            "ssl_cert_reqs": CERT_REQS[self.cert_reqs],
            # a partial of a module-level function: pickled into each spawned worker
            "ssl_context_factory": functools.partial(server_context, service=service),
        }


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--ssl-*`` flags of a service's command (uvicorn's names)."""
    group = parser.add_argument_group("TLS on the internal listener (see README: mutual TLS)")
    group.add_argument("--ssl-certfile", help="PEM certificate (chain) this service serves")
    group.add_argument("--ssl-keyfile", help="its private key (default: in --ssl-certfile)")
    group.add_argument("--ssl-ca-certs", help="PEM CA that client certificates must chain to")
    group.add_argument(
        "--ssl-cert-reqs",
        choices=sorted(CERT_REQS),
        help="client certificates: default 'required' with --ssl-ca-certs, else 'none'",
    )
