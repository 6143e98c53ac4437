"""The backend's error hierarchy; ``backend.app`` maps every one to a JSON response in one place."""

from __future__ import annotations


class BackendError(Exception):
    """Base class: ``status``, a stable machine-readable ``code`` and a human ``message``."""

    status = 500
    code = "internal_error"
    message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}


class BadRequest(BackendError):
    status = 400
    code = "bad_request"
    message = "the request body is not valid JSON"


class InvalidCredentials(BackendError):
    # One answer for unknown email, wrong password and disabled account: telling them apart
    # would let a caller enumerate accounts.
    status = 401
    code = "invalid_credentials"
    message = "invalid email or password"


class Unauthorized(BackendError):
    status = 401
    code = "unauthorized"
    message = "authentication required"


class Forbidden(BackendError):
    status = 403
    code = "forbidden"
    message = "you may not do this"


class CurrentPasswordRejected(Forbidden):
    """A password change whose current password did not verify. Its own code lets the gateway
    tell it from a 403 of the internal-token check (a wrong scope), which is an operator
    problem; the gateway's public answer is a bare 403 either way."""

    code = "current_password_rejected"
    message = "forbidden"


class NotFound(BackendError):
    # Another user's note is reported as missing, not forbidden, so ids cannot be probed.
    status = 404
    code = "not_found"
    message = "not found"


class Conflict(BackendError):
    status = 409
    code = "conflict"
    message = "already exists"


class ValidationFailed(BackendError):
    status = 422
    code = "validation_error"


class ServiceUnavailable(BackendError):
    status = 503
    code = "service_unavailable"
    message = "the database is unavailable; try again shortly"
    retry_after = 2

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(self.retry_after)})
