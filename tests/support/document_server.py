"""A tiny real HTTP server for key-set fetch tests: serves the bytes a test sets per path,
counts the requests it answered, and can be switched off (every request a 503)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class DocumentServer:
    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.down = False
        self.max_age = 300
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = server.documents.get(self.path)
                status = 503 if server.down else (200 if body is not None else 404)
                payload = body if status == 200 and body is not None else b"{}"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", f"max-age={server.max_age}")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fetches(self, path: str) -> int:
        return self.hits.get(path, 0)


@contextlib.contextmanager
def document_server() -> Iterator[DocumentServer]:
    server = DocumentServer()
    thread = threading.Thread(target=server._server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server._server.shutdown()
        server._server.server_close()
