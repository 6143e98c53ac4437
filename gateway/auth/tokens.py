"""Access and refresh tokens: HS256 JWTs with two independent secrets.

- Access token: JOSE header ``typ: at+jwt`` (RFC 9068 §2.1), claims ``iss aud sub sid roles typ jti
  iat exp`` with ``typ = "access"``.
- Refresh token: JOSE header ``typ: refresh+jwt``, claims ``iss aud sub sid typ jti iat exp gen
  sec`` with ``typ = "refresh"``. ``gen`` is the token's generation in its family and ``sec`` a
  random secret part whose digest only the ledger holds (``gateway.sessions.ledger``): a signature
  alone,
  even made with a leaked ``JWT_REFRESH_SECRET``, does not make a token the ledger accepts. Tokens
  issued before issue 14 carry neither claim; they are still verified (their ``jti`` plays the
  secret part, generation 0) and the ledger moves their family to the new form at the next rotation.

Explicit typing in the header and in the claims (RFC 8725 §3.11) plus separate secrets mean a
refresh token presented as an access token fails twice over, and the reverse.

Each header carries a ``kid`` derived from a one-way hash of the secret that signed it, never the
secret. The previous secret of each type (``*_PREVIOUS``) is accepted for verification only, so
secrets rotate without logging anyone out.

The algorithm is pinned: every encode and decode passes a joserfc registry allowing HS256 only
(RFC 8725 §3.1), so ``none`` and algorithm-confusion tokens are refused before a claim is read.

Refresh tokens are deterministic given their claims (HMAC has no randomness), which lets the
ledger re-issue the very same successor on a retried rotation without ever storing the token or its
secret part.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, OctKey
from joserfc.jws import JWSRegistry

from gateway.errors import InvalidToken
from gateway.settings import Settings

ALGORITHMS = ["HS256"]
# The registry is the allow-list joserfc consults on every encode and decode; with only HS256 in
# it, "none", HS384/512 and every asymmetric algorithm are refused before a claim is read.
REGISTRY = JWSRegistry(algorithms=ALGORITHMS)
ACCESS_TYP_HEADER = "at+jwt"
REFRESH_TYP_HEADER = "refresh+jwt"


def kid_for(secret: str) -> str:
    """A short public name for a secret: a domain-separated SHA-256 prefix (one-way)."""
    digest = hashlib.sha256(b"tokengate-kid\x00" + secret.encode("utf-8")).hexdigest()
    return digest[:16]


def new_jti() -> str:
    """128 random bits, URL-safe (RFC 7519 §4.1.7 asks for negligible collision probability)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    sid: str
    roles: tuple[str, ...]
    jti: str
    iat: int
    exp: int
    #: RFC 9449 §6.1 ``cnf.jkt``: the thumbprint of the key this token is bound to (DPoP), or
    #: ``None`` for a bearer token.
    jkt: str | None = None


#: Longest ``sec`` claim accepted (the ledger issues 43 characters: 32 bytes, base64url).
MAX_SECRET_CLAIM = 128


@dataclass(frozen=True)
class RefreshClaims:
    sub: str
    sid: str
    jti: str
    iat: int
    exp: int
    #: generation and secret part; both ``None`` in a token of the old (pre-issue 14) format
    gen: int | None = None
    sec: str | None = field(default=None, repr=False)


class _KeyRing:
    """One signing key and the keys accepted for verification, looked up by ``kid``."""

    def __init__(self, current: str, previous: str | None) -> None:
        self.signing_kid = kid_for(current)
        self.signing_key = OctKey.import_key(current.encode("utf-8"))
        self._verify: dict[str, OctKey] = {self.signing_kid: self.signing_key}
        if previous:
            self._verify[kid_for(previous)] = OctKey.import_key(previous.encode("utf-8"))

    def resolve(self, obj: GuestProtocol) -> OctKey:
        kid = obj.headers().get("kid")
        key = self._verify.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken()
        return key


class TokenService:
    def __init__(self, settings: Settings) -> None:
        self._issuer = settings.gateway_id
        self._audience = settings.access_token_audience
        self.access_ttl = settings.access_token_ttl
        self.refresh_ttl = settings.refresh_token_ttl
        self._access = _KeyRing(settings.jwt_access_secret, settings.jwt_access_secret_previous)
        self._refresh = _KeyRing(settings.jwt_refresh_secret, settings.jwt_refresh_secret_previous)
        common: dict[str, Any] = {
            "iss": {"essential": True, "value": self._issuer},
            "aud": {"essential": True, "value": self._audience},
            "sub": {"essential": True},
            "sid": {"essential": True},
            "jti": {"essential": True},
            "iat": {"essential": True},
            "exp": {"essential": True},
        }
        self._access_registry = jwt.JWTClaimsRegistry(
            **common, typ={"essential": True, "value": "access"}
        )
        self._refresh_registry = jwt.JWTClaimsRegistry(
            **common, typ={"essential": True, "value": "refresh"}
        )

    # -- access -------------------------------------------------------------------------------

    def issue_access(
        self,
        *,
        sub: str,
        sid: str,
        roles: Sequence[str],
        now: int | None = None,
        jkt: str | None = None,
    ) -> tuple[str, AccessClaims]:
        iat = int(time.time()) if now is None else now
        claims = AccessClaims(
            sub=sub,
            sid=sid,
            roles=tuple(roles),
            jti=new_jti(),
            iat=iat,
            exp=iat + self.access_ttl,
            jkt=jkt,
        )
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": sub,
            "sid": sid,
            "roles": list(claims.roles),
            "typ": "access",
            "jti": claims.jti,
            "iat": claims.iat,
            "exp": claims.exp,
        }
        if jkt is not None:
            payload["cnf"] = {"jkt": jkt}
        header = {"alg": "HS256", "typ": ACCESS_TYP_HEADER, "kid": self._access.signing_kid}
        return jwt.encode(header, payload, self._access.signing_key, registry=REGISTRY), claims

    def verify_access(self, token: str) -> AccessClaims:
        """Verify an access token or raise :class:`InvalidToken` (401) whatever went wrong."""
        claims = self._decode(token, self._access, ACCESS_TYP_HEADER, self._access_registry)
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken()
        jkt: str | None = None
        if "cnf" in claims:
            cnf = claims["cnf"]
            if not isinstance(cnf, dict) or not isinstance(cnf.get("jkt"), str) or not cnf["jkt"]:
                raise InvalidToken()
            jkt = cnf["jkt"]
        return AccessClaims(
            sub=claims["sub"],
            sid=claims["sid"],
            roles=tuple(roles),
            jti=claims["jti"],
            iat=claims["iat"],
            exp=claims["exp"],
            jkt=jkt,
        )

    # -- refresh ------------------------------------------------------------------------------

    def encode_refresh(self, claims: RefreshClaims) -> str:
        """Sign a refresh token; the same claims give the same token (HMAC is deterministic).

        Without ``gen`` and ``sec`` the token has the old format (legacy families only).
        """
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": claims.sub,
            "sid": claims.sid,
            "typ": "refresh",
            "jti": claims.jti,
            "iat": claims.iat,
            "exp": claims.exp,
        }
        if (claims.gen is None) != (claims.sec is None):
            raise ValueError("gen and sec go together")
        if claims.gen is not None:
            payload["gen"] = claims.gen
            payload["sec"] = claims.sec
        header = {"alg": "HS256", "typ": REFRESH_TYP_HEADER, "kid": self._refresh.signing_kid}
        return jwt.encode(header, payload, self._refresh.signing_key, registry=REGISTRY)

    def verify_refresh(self, token: str) -> RefreshClaims:
        claims = self._decode(token, self._refresh, REFRESH_TYP_HEADER, self._refresh_registry)
        gen, sec = claims.get("gen"), claims.get("sec")
        if gen is None and sec is None:
            gen_value, sec_value = None, None  # the old format: accepted, migrated on rotation
        elif (
            isinstance(gen, int)
            and not isinstance(gen, bool)
            and 1 <= gen < 2**31
            and isinstance(sec, str)
            and 0 < len(sec) <= MAX_SECRET_CLAIM
        ):
            gen_value, sec_value = gen, sec
        else:
            raise InvalidToken()
        return RefreshClaims(
            sub=claims["sub"],
            sid=claims["sid"],
            jti=claims["jti"],
            iat=claims["iat"],
            exp=claims["exp"],
            gen=gen_value,
            sec=sec_value,
        )

    # -- shared -------------------------------------------------------------------------------

    @staticmethod
    def _decode(
        token: str, ring: _KeyRing, typ_header: str, registry: jwt.JWTClaimsRegistry
    ) -> dict[str, Any]:
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise InvalidToken()
        try:
            decoded = jwt.decode(token, ring.resolve, registry=REGISTRY)
            if decoded.header.get("typ") != typ_header:
                raise InvalidToken()
            registry.validate(decoded.claims)
        except InvalidToken:
            raise
        except (JoseError, ValueError, TypeError, KeyError, UnicodeError):
            raise InvalidToken() from None
        claims = decoded.claims
        for name in ("sub", "sid", "jti"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise InvalidToken()
        for name in ("iat", "exp"):
            if not isinstance(claims.get(name), int) or isinstance(claims[name], bool):
                raise InvalidToken()
        return claims
