"""One structured access-log line per request: what was asked, what came back, for whom, how fast.

The path is logged without its query string (queries can carry personal data) and the user id is
whatever the handler put at ``scope["state"]["user_id"]`` once the caller was authenticated. The
request id comes with every line through :data:`servicekit.logs.request_id_var`, so this middleware
sits inside :class:`servicekit.request_id.RequestIdMiddleware`.
"""

from __future__ import annotations

import logging
import time

from servicekit.logs import log_event
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("gateway.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            state = scope.get("state") or {}
            log_event(
                logger,
                "request",
                method=scope["method"],
                path=scope["path"],
                # 0 means the app failed before answering; the server sends a 500.
                status=status or 500,
                duration_ms=round((time.perf_counter() - start) * 1000, 3),
                user_id=state.get("user_id"),
            )
