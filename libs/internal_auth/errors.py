"""The one exception hierarchy of internal_auth and its machine-readable reasons."""

from __future__ import annotations

import enum

__all__ = ["InternalAuthError", "KeyLoadError", "Reason"]


class Reason(enum.StrEnum):
    """Why a token, a request or a key was refused.

    The value is stable and meant for audit logs and metrics; it is never sent to a client
    (a response only says "unauthorized" or "forbidden"), so an attacker cannot learn which
    check a forged token failed.
    """

    #: No token where one is required.
    MISSING = "missing"
    #: Not a JWS compact serialisation we can parse (bad base64url, JSON, size, headers).
    MALFORMED = "malformed"
    #: ``alg`` is anything but ``EdDSA`` (``none``, ``HS256``, ``RS256``, ...), RFC 8725 §3.1.
    BAD_ALGORITHM = "bad_algorithm"
    #: The JOSE ``typ`` header is not ``internal+jwt`` (explicit typing, RFC 8725 §3.11).
    BAD_TYPE = "bad_type"
    #: No key in the key set has the token's ``kid``.
    UNKNOWN_KID = "unknown_kid"
    #: The Ed25519 signature does not verify.
    BAD_SIGNATURE = "bad_signature"
    #: ``exp`` is in the past, beyond the leeway.
    EXPIRED = "expired"
    #: ``nbf`` or ``iat`` is in the future, beyond the leeway.
    NOT_YET_VALID = "not_yet_valid"
    #: ``iss`` is not the configured issuer (RFC 8725 §3.8).
    WRONG_ISSUER = "wrong_issuer"
    #: ``aud`` does not name this service (RFC 8725 §3.9).
    WRONG_AUDIENCE = "wrong_audience"
    #: A required claim is absent.
    MISSING_CLAIM = "missing_claim"
    #: A claim has the wrong type or an impossible value (e.g. a lifetime over 60 s).
    INVALID_CLAIM = "invalid_claim"
    #: A valid token whose ``scope`` is not the one the route needs.
    WRONG_SCOPE = "wrong_scope"
    #: ``htm``/``htu`` do not match the request's method and path (a replayed header).
    UNBOUND_REQUEST = "unbound_request"
    #: The token's ``jti`` was already used at this verifier (single use, a replay).
    REPLAYED = "replayed"
    #: The single-use cache is full of live entries: refused rather than evicting one.
    REPLAY_CACHE_FULL = "replay_cache_full"
    #: The request path matches no rule of the middleware (fail closed).
    NO_RULE = "no_rule"
    #: Key material is unusable: wrong type, private where public belongs, unparsable.
    KEY_INVALID = "key_invalid"


class InternalAuthError(Exception):
    """Any internal_auth failure. ``reason`` says which; the message is safe to log.

    The message never contains the token, a claim value taken from an unverified token, or key
    material, so ``log_event(..., reason=exc.reason)`` or ``str(exc)`` can go to any log.

    ``iss`` is the issuer of the token when the failure happened *after* the signature was
    verified (so it is authentic), otherwise ``None``.
    """

    def __init__(self, reason: Reason, message: str, *, iss: str | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message: str = message
        self.iss: str | None = iss

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason.value!r}, message={self.message!r})"


class KeyLoadError(InternalAuthError):
    """Key material that cannot be used: raised at start-up so a misconfiguration fails fast."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.KEY_INVALID, message)
