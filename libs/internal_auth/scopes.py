"""What an internal token allows: one scope per kind of call from the gateway."""

from __future__ import annotations

import enum

__all__ = ["TokenScope"]


class TokenScope(enum.StrEnum):
    """The ``scope`` claim of an internal token (one value, RFC 9068 §2.2.3 style).

    Each protected route names the scopes it accepts (usually one), so a token minted for one
    kind of call cannot be used for another. Add a member only for a new kind of
    gateway-to-service call.

    Named ``TokenScope`` (not ``Scope``) because in an ASGI codebase ``Scope`` is the ASGI
    connection scope; the old name is a deprecated alias (see :func:`internal_auth.__getattr__`).
    """

    #: A user's request proxied by the gateway; ``sub`` is the user id, ``sid`` their session.
    USER_REQUEST = "user_request"
    #: The gateway asking the backend to check a credential; ``sub`` is the gateway id.
    AUTH_VALIDATE = "auth_validate"
    #: The gateway asking the backend for an account's status, roles and session epochs (before
    #: every refresh rotation, and to rebuild its epoch view); ``sub`` is the gateway id.
    REFRESH_LIFECYCLE = "refresh_lifecycle"
    #: A request without credentials that a ``public = true`` rule of the gateway's policy let
    #: through (``GATEWAY_CONFIG``); ``sub`` is the gateway id (no user id can equal it) and
    #: ``roles`` is empty. A service accepts it only on the routes it opts into it, so a public
    #: rule written by mistake at the gateway still cannot reach a route that needs a user.
    ANONYMOUS = "anonymous_request"
    #: The gateway's readiness probe (``PROBE_PATH``, answered by
    #: :class:`~internal_auth.InternalAuthMiddleware` itself): proves the service holds the
    #: gateway's key and agrees on issuer and audience; grants nothing else.
    PROBE = "probe"
