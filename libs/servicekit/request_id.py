"""The request id: one value that ties together every log line of one request on both services.

A client (or a load balancer in front) may send ``X-Request-Id`` so its own logs line up with
ours, but the value lands in log lines and in a header to the backend, so it is accepted only when
it is short and made of harmless characters; anything else (newlines for log injection, huge
values, quotes) is replaced by a fresh random id rather than cleaned up
(:func:`servicekit.logs.request_id_from`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicekit.logs import REQUEST_ID_HEADER, request_id_from, request_id_var

__all__ = ["HEADER", "RequestIdMiddleware"]

HEADER = REQUEST_ID_HEADER


class RequestIdMiddleware:
    """Pick the request id, expose it to logs and handlers, and return it to the client.

    The id is in :data:`servicekit.logs.request_id_var` for log lines and in
    ``scope["state"]["request_id"]`` (``request.state.request_id``) for code that forwards it;
    the response carries it in ``X-Request-Id`` (replacing any the app set), so a client can
    quote it in a bug report. The backend uses this class and so logs under the gateway's id;
    the gateway's edge layer (``gateway/edge.py``) does the same with the same helpers, folded
    into its one layer for the hot path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope["headers"])
        scope.setdefault("state", {})["request_id"] = rid
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if h[0].lower() != HEADER),
                    header,
                ]
            await send(message)

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
