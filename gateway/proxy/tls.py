"""The gateway's TLS context for the hop to a service: that service's CA, nothing else.

:func:`client_context` takes plain paths, so the one backend (``BACKEND_CA_FILE``,
``BACKEND_CLIENT_CERT_FILE``, ``BACKEND_CLIENT_KEY_FILE``) and each service of a config file
build theirs the same way. One context serves every connection to that service: the pool's
(:mod:`gateway.proxy.upstream`, one handshake per connection), the identity calls' and the
readiness probe's (httpx ``verify=``).
"""

from __future__ import annotations

import ssl

from servicekit.tls import harden


class TLSFileError(ValueError):
    """A CA, certificate or key file cannot be used; the message names which (never content)."""

    def __init__(self, which: str, exc: BaseException) -> None:
        detail = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
        detail = detail or str(exc) or type(exc).__name__
        super().__init__(f"cannot load the {which} ({detail})")
        self.which = which


def client_context(
    ca_file: str, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client context that trusts ``ca_file`` only, verifies the host name (the URL's, sent as
    SNI) and speaks TLS 1.2 or later; with ``cert_file`` it presents that certificate (and
    ``key_file``'s key, or the key inside ``cert_file``) for mutual TLS.

    ``PROTOCOL_TLS_CLIENT`` sets ``CERT_REQUIRED`` and ``check_hostname`` and, unlike
    ``create_default_context``, loads no system store: a certificate any public CA issued for the
    service's name must not be able to pose as the service (backend impersonation).
    """
    # RFC 8996: TLS 1.0 and 1.1 are retired. Every handshake this side refuses (another CA,
    # another host name: an impostor on the internal network) is counted as
    # tokengate_tls_handshake_failures_total{service="gateway"}.
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "gateway")
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSFileError("CA file", exc) from None
    if not context.get_ca_certs():
        # a file with no certificate in it would verify nothing and refuse everything
        raise TLSFileError("CA file", ValueError("no CA certificate in it"))
    if key_file is not None and cert_file is None:
        raise TLSFileError("client key", ValueError("a key without its certificate"))
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSFileError("client certificate and key", exc) from None
    return context
