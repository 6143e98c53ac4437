"""The gateway's signing keys: the one holder every minter signs through, its reload, and the
internal listener that publishes the public halves.

- :func:`load_keys` builds the process's :class:`internal_auth.KeyHolder` from the settings
  (one PEM key, or a key file with roles: docs/SECURITY.md, "Rotating the internal signing
  key"). With a file, :func:`watch_key_file` re-reads it every
  ``GATEWAY_CONFIG_RELOAD_INTERVAL`` seconds; a change is swapped in at once, an invalid file
  keeps the last good set (logged as ``signing_keys_reload_failed`` and counted).
- :class:`InternalListener` serves ``GET /.well-known/jwks.json`` (the JWK Set of every key in
  the file: next, active and previous) and ``GET /.well-known/jwks.jws`` (the same set signed by
  each of its keys, :func:`internal_auth.signed_key_set`) on ``INTERNAL_LISTEN_HOST:PORT``,
  never the public port. It runs once per gateway (in the parent beside the metrics listener,
  whatever ``--workers``) and re-reads the key file on every request whose answer could have
  changed, so it never publishes a set older than the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from internal_auth import (
    JWKS_CONTENT_TYPE,
    KeyHolder,
    KeyLoadError,
    SigningKeys,
    key_set_document,
    signed_key_set,
)
from servicekit.config import ConfigError
from servicekit.logs import log_event

from gateway import metrics
from gateway.settings import Settings

logger = logging.getLogger("gateway.signing")

JWKS_PATH = "/.well-known/jwks.json"
SIGNED_JWKS_PATH = "/.well-known/jwks.jws"


def load_keys(settings: Settings) -> KeyHolder:
    """The holder of this process's signing keys; a :class:`ConfigError` names the variable."""
    try:
        keys = SigningKeys.parse(settings.internal_jwt_private_key)
    except KeyLoadError as exc:
        raise ConfigError(
            "INTERNAL_JWT_PRIVATE_KEY[S][_FILE]: not a valid Ed25519 key or key file "
            f"({exc.message})"
        ) from None
    holder = KeyHolder(
        keys,
        path=settings.internal_jwt_private_keys_file,
        text=settings.internal_jwt_private_key,
    )
    return holder


async def watch_key_file(holder: KeyHolder, interval: float) -> None:
    """Re-read the key file every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        reload_once(holder)


def reload_once(holder: KeyHolder) -> bool:
    """One re-read: ``True`` when a new set was swapped in; an invalid file keeps the old one."""
    try:
        changed = holder.reload()
    except KeyLoadError as exc:
        metrics.signing_keys_reload("failed")
        log_event(
            logger,
            "signing_keys_reload_failed",
            level=logging.ERROR,
            reason=exc.message,
            kept_kids=",".join(k.kid for k in holder.keys),
        )
        return False
    if changed:
        metrics.signing_keys_reload("changed")
        log_event(
            logger,
            "signing_keys_reloaded",
            active=holder.signer.kid,
            kids=",".join(f"{k.kid}:{k.role}" for k in holder.keys),
        )
    return changed


class InternalListener:
    """The internal listener (see the module docstring): a small threaded HTTP server."""

    def __init__(
        self,
        holder: KeyHolder,
        *,
        host: str,
        port: int,
        max_age: int,
        certificate: tuple[str, str] | None = None,
    ) -> None:
        self.holder = holder
        self.max_age = max_age
        self._lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "tokengate"
            sys_version = ""

            def do_GET(self) -> None:
                listener._answer(self)

            def do_HEAD(self) -> None:
                listener._answer(self, head=True)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"INTERNAL_LISTEN_PORT: cannot listen on {host}:{port} ({exc.strerror})"
            ) from None
        self._server.daemon_threads = True
        if certificate is not None:
            # TLS 1.2+, the gateway's own certificate: services pin its CA (INTERNAL_JWKS_CA_FILE)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(*certificate)
            except (OSError, ssl.SSLError) as exc:
                self._server.server_close()
                raise ConfigError(
                    f"INTERNAL_LISTEN_CERT_FILE/INTERNAL_LISTEN_KEY_FILE: cannot load them ({exc})"
                ) from None
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="internal-listener", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> InternalListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def documents(self) -> tuple[bytes, bytes]:
        """The JWK Set and its signed copy, from the key file as it is now."""
        with self._lock:
            reload_once(self.holder)
            keys = self.holder.keys
        plain = key_set_document(keys.public_keys)
        signed = json.dumps(signed_key_set(k.key for k in keys), separators=(",", ":")).encode(
            "utf-8"
        )
        return plain, signed

    def _answer(self, request: BaseHTTPRequestHandler, *, head: bool = False) -> None:
        path = request.path.split("?", 1)[0]
        if path not in (JWKS_PATH, SIGNED_JWKS_PATH):
            body, status, kind = (
                b'{"error":{"code":"not_found","message":"Not found."}}',
                404,
                ("application/json"),
            )
        else:
            plain, signed = self.documents()
            if path == JWKS_PATH:
                body, status, kind = plain, 200, JWKS_CONTENT_TYPE
            else:
                body, status, kind = signed, 200, "application/jose+json"
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        if status == 200:
            request.send_header("Cache-Control", f"max-age={self.max_age}")
        request.end_headers()
        if not head:
            request.wfile.write(body)


def start_internal_listener(settings: Settings) -> InternalListener | None:
    """The listener when ``INTERNAL_LISTEN_PORT`` is set, started; ``None`` otherwise."""
    if settings.internal_listen_port is None:
        return None
    holder = load_keys(settings)
    return InternalListener(
        holder,
        host=settings.internal_listen_host,
        port=settings.internal_listen_port,
        max_age=settings.internal_jwks_max_age,
        certificate=(
            (settings.internal_listen_cert_file, settings.internal_listen_key_file)
            if settings.internal_listen_cert_file and settings.internal_listen_key_file
            else None
        ),
    ).start()
