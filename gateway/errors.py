"""The gateway's one error hierarchy; ``app.py`` maps it to ``{"error": {"code", "message"}}``.

Handlers raise these; they never build error responses by hand. Messages are fixed strings chosen
here, so no token, password or secret can reach a response through an error.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    code: str = "internal_error"
    message: str = "internal error"
    # Set on refresh/logout failures: the response also deletes the refresh cookie so a dead
    # token is not presented again and again.
    clear_cookie: bool = False

    def __init__(
        self,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        clear_cookie: bool = False,
    ) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        if clear_cookie:
            self.clear_cookie = True


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    message = "malformed request"


class ValidationFailed(GatewayError):
    status = 422
    code = "validation_error"
    message = "request body is not valid"


class URITooLong(GatewayError):
    status = 414
    code = "uri_too_long"
    message = "request path is too long"


class Unauthorized(GatewayError):
    """Any failed authentication: the message never says which check failed."""

    status = 401
    code = "unauthorized"
    message = "authentication required"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    message = "invalid email or password"
    #: for the audit trail only, never in the response: the account the identity service
    #: matched (unknown email: None) and why it refused (``password``, ``disabled``, ...)
    subject: str | None = None
    reason: str | None = None


class InvalidToken(Unauthorized):
    code = "invalid_token"
    message = "token is invalid or expired"


class SessionRevoked(Unauthorized):
    code = "session_revoked"
    message = "session has been revoked"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    message = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    message = "not found"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"
    message = "too many requests"


class ServiceUnavailable(GatewayError):
    """A dependency (backend, PostgreSQL, Redis) is down; clients should retry later."""

    status = 503
    code = "service_unavailable"
    message = "a dependency is unavailable, retry later"
    retry_after = 5

    def __init__(self, message: str | None = None, *, retry_after: int = retry_after) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class GatewayBusy(ServiceUnavailable):
    """Every backend connection this request may use is taken (the pool's wait ran out, or the
    uploads' share is full): the gateway is overloaded, the backend is not late (that is 504)."""

    code = "gateway_busy"
    message = "the gateway is busy, retry later"
    retry_after = 1

    def __init__(self, message: str | None = None, *, retry_after: int = retry_after) -> None:
        super().__init__(message, retry_after=retry_after)


class BadGateway(GatewayError):
    status = 502
    code = "bad_gateway"
    message = "the backend gave an invalid answer"


class MisconfiguredService(BadGateway):
    """A service refused the gateway's internal token: an operator must fix keys or ids (the
    log line says which); clients are told to come back later, not that they are wrong."""

    message = "the service cannot verify the gateway; retry later"
    retry_after = 30

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(self.retry_after)})


class GatewayTimeout(GatewayError):
    status = 504
    code = "gateway_timeout"
    message = "the backend did not answer in time"
