"""The one JSON error shape both services answer with: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from servicekit.bodies import BodyError

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) in the same JSON shape."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, code.replace("_", " "), exc.headers)


async def body_error(request: Request, exc: Exception) -> Response:
    """A refused request body (:mod:`servicekit.bodies`): its own status, code and message."""
    if not isinstance(exc, BodyError):  # registered for BodyError only
        raise exc
    return error_response(exc.status, exc.code, exc.message, exc.headers or None)
