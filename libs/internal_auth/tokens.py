"""Minting and verifying internal tokens: the gateway's signed statement about one request.

A token is a JWS compact serialisation (RFC 7515 §7.1) with the protected header
``{"alg": "EdDSA", "typ": "internal+jwt", "kid": <RFC 7638 thumbprint>}`` and the claims
``iss aud sub scope roles [sid] [pol] jti iat nbf exp htm htu``; ``pol`` names the gateway policy
rule that allowed the request (so a service's own log shows why it was let in). ``htm``/``htu``
bind it to one method and path (the idea of RFC 9449 §4.2), so a leaked header cannot be replayed
on another route.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError

from ._jws import ALGORITHM, REGISTRY, TOKEN_TYPE, b64url_decode, encode_header, sign_compact
from .errors import InternalAuthError, Reason
from .keyfile import KeyHolder
from .keys import KeySet, PrivateKey, PublicKey
from .replay import ReplayCache
from .scopes import TokenScope

__all__ = ["HEADER", "MAX_TTL", "Minter", "Principal", "Verifier"]

#: The HTTP header that carries the internal token from the gateway to a service.
HEADER = "X-Internal-Auth"
#: Longest lifetime a token may have, minted or accepted (seconds).
MAX_TTL = 60
#: Upper bound on a token's length; ours are ~600 bytes. Stops oversized input early.
MAX_TOKEN_LENGTH = 4096

# Built once: json.dumps with options constructs a new encoder on every call.
_CLAIMS_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
_ALLOWED_HEADER_PARAMS = frozenset({"alg", "typ", "kid"})
# RFC 7515 §4.1.9: "typ" compares case-insensitively and may omit the "application/" prefix.
_ACCEPTED_TYPES = frozenset({TOKEN_TYPE, "application/" + TOKEN_TYPE})


class _Default:
    """The type of "not given" for ``replay_cache`` (``None`` means "off")."""


_DEFAULT = _Default()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the gateway vouches for in a verified internal token.

    ``sub`` is the user id for :attr:`TokenScope.USER_REQUEST` (the gateway id for system calls);
    ``roles`` and ``sid`` come from the token as minted; ``jti``, ``iss``, ``iat`` and ``exp``
    are there for audit logs, and so is ``pol``: the name of the gateway policy rule that allowed
    the request (``None`` without a policy, and for the gateway's own calls). ``scope`` is the
    token's scope, one of those the route accepts.
    """

    sub: str
    scope: TokenScope
    roles: tuple[str, ...]
    sid: str | None
    jti: str
    iss: str
    iat: int
    exp: int
    pol: str | None = None


class Minter:
    """Signs internal tokens with the gateway's Ed25519 key.

    ``ttl`` is the token lifetime in seconds, 1..60: long enough for one request, short enough
    that a leaked token is worthless soon after; the verifier refuses lifetimes over 60 s too.
    The header segment is encoded once here; :meth:`mint` only serialises the claims and signs.
    """

    __slots__ = (
        "_audience",
        "_clock",
        "_header_segment",
        "_holder",
        "_issuer",
        "_key",
        "_sign",
        "_ttl",
        "kid",
    )

    def __init__(
        self,
        private_key: PrivateKey | KeyHolder,
        *,
        issuer: str,
        audience: str,
        ttl: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A KeyHolder: the signer is read on every mint, so a reloaded key file takes effect
        # at the next token with no new Minter (docs/SECURITY.md, key rotation).
        self._holder = private_key if isinstance(private_key, KeyHolder) else None
        if self._holder is not None:
            private_key = self._holder.signer
        if not isinstance(private_key, PrivateKey):
            raise TypeError("Minter needs a PrivateKey (load_private_key / generate_private_key)")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be an integer from 1 to {MAX_TTL} seconds")
        _require_text("issuer", issuer)
        _require_text("audience", audience)
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._clock = clock
        self._use(private_key)

    def _use(self, key: PrivateKey) -> None:
        self._key = key
        self._sign = key._sign
        #: ``kid`` header of the tokens this minter signs now.
        self.kid: str = key.kid
        self._header_segment = encode_header({"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": key.kid})

    def mint(
        self,
        *,
        sub: str,
        scope: TokenScope,
        htm: str,
        htu: str,
        roles: Sequence[str] = (),
        sid: str | None = None,
        audience: str | None = None,
        pol: str | None = None,
    ) -> str:
        """A signed token for one request: ``htm`` its method, ``htu`` the path the service sees.

        ``htu`` is the path only (no scheme, host or query string), exactly as the receiving
        service's ASGI ``scope["path"]``. ``audience`` overrides the minter's own for this token
        (one minter, one key, one token per service's audience); ``pol`` names the policy rule
        that allowed the request.
        """
        _require_text("sub", sub)
        if not htu.startswith("/") or "?" in htu or "#" in htu:
            raise ValueError("htu must be the request path only, starting with '/'")
        if isinstance(roles, str):
            raise TypeError("roles must be a sequence of role names, not one string")
        if self._holder is not None and self._holder.signer is not self._key:
            self._use(self._holder.signer)
        if audience is not None:
            _require_text("audience", audience)
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience if audience is None else audience,
            "sub": sub,
            "scope": TokenScope(scope).value,
            "roles": list(roles),
        }
        if sid is not None:
            claims["sid"] = sid
        if pol is not None:
            _require_text("pol", pol)
            claims["pol"] = pol
        # 128 random bits (RFC 7519 §4.1.7: jti must not collide) for replay detection and audit.
        claims["jti"] = secrets.token_urlsafe(16)
        claims["iat"] = now
        claims["nbf"] = now
        claims["exp"] = now + self._ttl
        claims["htm"] = htm.upper()
        claims["htu"] = htu
        payload = _CLAIMS_ENCODER.encode(claims).encode("ascii")
        return sign_compact(self._header_segment, payload, self._sign)

    def __repr__(self) -> str:
        return f"Minter(kid={self.kid!r}, issuer={self._issuer!r}, audience={self._audience!r})"


class Verifier:
    """Checks internal tokens against a key set, an issuer and an audience.

    Every check is explicit (RFC 8725 §3): the algorithm is pinned to ``EdDSA`` through an
    allow-list registry on every decode (§3.1), the key is chosen by ``kid`` from trusted public
    keys only, ``typ`` must be ``internal+jwt`` (§3.11), ``iss`` and ``aud`` must match (§3.8,
    §3.9), ``exp``/``nbf``/``iat`` hold within ``leeway`` seconds and the lifetime is at most
    60 s, ``jti`` is present, the request binding matches, and finally the scope. Any failure
    raises :class:`InternalAuthError` with a :class:`Reason`.

    Single use is on by default: a token that passes every check has its ``jti`` recorded in
    ``replay_cache`` (a fresh :class:`ReplayCache` per verifier unless one is given) and is
    refused the second time (:attr:`Reason.REPLAYED`). ``replay_cache=None`` turns that off, for
    a caller that must verify one token several times.
    """

    __slots__ = ("_audience", "_clock", "_issuer", "_keys", "_leeway", "replay_cache")

    def __init__(
        self,
        keys: KeySet | PublicKey,
        *,
        issuer: str,
        audience: str,
        leeway: int = 5,
        clock: Callable[[], float] = time.time,
        replay_cache: ReplayCache | _Default | None = _DEFAULT,
    ) -> None:
        if isinstance(keys, PublicKey):
            keys = KeySet([keys])
        if not isinstance(keys, KeySet):
            raise TypeError("Verifier needs a KeySet of public keys (load_public_keys)")
        if not isinstance(leeway, int) or isinstance(leeway, bool) or not 0 <= leeway <= MAX_TTL:
            raise ValueError(f"leeway must be an integer from 0 to {MAX_TTL} seconds")
        _require_text("issuer", issuer)
        _require_text("audience", audience)
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._clock = clock
        #: Where used ``jti`` values are remembered (``None``: single use is off).
        self.replay_cache: ReplayCache | None = (
            ReplayCache(clock=clock) if isinstance(replay_cache, _Default) else replay_cache
        )

    @property
    def keys(self) -> KeySet:
        """The trusted keys (a :class:`internal_auth.RemoteKeySet` when they are fetched)."""
        return self._keys

    def verify(
        self,
        token: str | bytes,
        *,
        scope: TokenScope | Collection[TokenScope],
        htm: str,
        htu: str,
    ) -> Principal:
        """Verify ``token`` for a request ``htm htu`` on a route that needs ``scope`` (one
        :class:`TokenScope`, or a collection of them: the token must carry one of those)."""
        obj = self._verified_jws(token)
        try:
            claims = json.loads(obj.payload)
        except ValueError:
            raise InternalAuthError(Reason.MALFORMED, "claims are not JSON") from None
        if not isinstance(claims, dict):
            raise InternalAuthError(Reason.MALFORMED, "claims are not a JSON object")
        return self._check_claims(claims, scope, htm, htu)

    def _verified_jws(self, token: str | bytes) -> jws.CompactSignature:
        if not token:
            raise InternalAuthError(Reason.MISSING, "no internal token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InternalAuthError(Reason.MALFORMED, "token too long")
        try:
            if isinstance(token, str):
                raw = token.encode("ascii")
            else:
                token.decode("ascii")
                raw = bytes(token)
        except (UnicodeError, AttributeError):
            raise InternalAuthError(Reason.MALFORMED, "token is not ASCII") from None
        # No detached payload (RFC 7515 Appendix F); an empty signature fails on alg or signature.
        parts = raw.split(b".")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise InternalAuthError(Reason.MALFORMED, "not a JWS compact serialisation")
        try:
            obj = jws.extract_compact(raw, registry=REGISTRY)
        except (JoseError, ValueError, TypeError):
            raise InternalAuthError(Reason.MALFORMED, "not a JWS compact serialisation") from None
        header = obj.headers()
        if not isinstance(header, dict):
            raise InternalAuthError(Reason.MALFORMED, "header is not a JSON object")
        # RFC 8725 §3.1: decide by our allow-list before touching any key.
        if header.get("alg") != ALGORITHM:
            raise InternalAuthError(Reason.BAD_ALGORITHM, "algorithm not allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES:
            raise InternalAuthError(Reason.BAD_TYPE, "not an internal token (typ)")
        # jku/x5u/jwk/crit are never honoured (RFC 8725 §3.10): a token cannot choose its key.
        if not _ALLOWED_HEADER_PARAMS.issuperset(header):
            raise InternalAuthError(Reason.MALFORMED, "unexpected header parameter")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InternalAuthError(Reason.UNKNOWN_KID, "no trusted key for this kid")
        # The registry resolves "EdDSA" on every decode (the allow-list, RFC 8725 §3.1); the
        # header was checked field by field above, so joserfc's generic validate_compact (crit,
        # key guessing) would only repeat work on the hot path.
        alg = REGISTRY.get_alg(header["alg"])
        try:
            signature = b64url_decode(obj.segments["signature"])
        except ValueError:
            raise InternalAuthError(Reason.MALFORMED, "signature is not base64url") from None
        signing_input = obj.segments["header"] + b"." + obj.segments["payload"]
        if not alg.verify(signing_input, signature, key._jwk):
            raise InternalAuthError(Reason.BAD_SIGNATURE, "signature does not verify")
        return obj

    def _check_claims(
        self,
        claims: dict[str, Any],
        scope: TokenScope | Collection[TokenScope],
        htm: str,
        htu: str,
    ) -> Principal:
        iss = claims.get("iss")
        if iss is None:
            raise InternalAuthError(Reason.MISSING_CLAIM, "claim iss is missing")
        if iss != self._issuer:
            raise InternalAuthError(Reason.WRONG_ISSUER, "issuer not trusted")
        # From here the issuer is authentic, so errors carry it for audit logs.
        aud = claims.get("aud")
        if aud is None:
            raise InternalAuthError(Reason.MISSING_CLAIM, "claim aud is missing", iss=iss)
        if isinstance(aud, list) and all(isinstance(item, str) for item in aud):
            audience_ok = self._audience in aud
        elif isinstance(aud, str):
            audience_ok = aud == self._audience
        else:
            raise InternalAuthError(Reason.INVALID_CLAIM, "claim aud has the wrong type", iss=iss)
        if not audience_ok:
            raise InternalAuthError(Reason.WRONG_AUDIENCE, "token is for another audience", iss=iss)

        now = self._clock()
        exp = _numeric_date(claims, "exp", iss)
        nbf = _numeric_date(claims, "nbf", iss)
        iat = _numeric_date(claims, "iat", iss)
        if now >= exp + self._leeway:
            raise InternalAuthError(Reason.EXPIRED, "token expired", iss=iss)
        if nbf > now + self._leeway or iat > now + self._leeway:
            raise InternalAuthError(Reason.NOT_YET_VALID, "token not valid yet", iss=iss)
        if exp - iat > MAX_TTL or exp < iat:
            raise InternalAuthError(Reason.INVALID_CLAIM, "token lifetime out of range", iss=iss)

        jti = _text_claim(claims, "jti", iss)
        sub = _text_claim(claims, "sub", iss)
        claimed_htm = _text_claim(claims, "htm", iss)
        claimed_htu = _text_claim(claims, "htu", iss)
        claimed_scope = _text_claim(claims, "scope", iss)
        roles = claims.get("roles")
        if roles is None:
            raise InternalAuthError(Reason.MISSING_CLAIM, "claim roles is missing", iss=iss)
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise InternalAuthError(Reason.INVALID_CLAIM, "claim roles has the wrong type", iss=iss)
        sid = claims.get("sid")
        if sid is not None and (not isinstance(sid, str) or not sid):
            raise InternalAuthError(Reason.INVALID_CLAIM, "claim sid has the wrong type", iss=iss)
        pol = claims.get("pol")
        if pol is not None and (not isinstance(pol, str) or not pol):
            raise InternalAuthError(Reason.INVALID_CLAIM, "claim pol has the wrong type", iss=iss)

        if claimed_htm != htm.upper() or claimed_htu != htu:
            raise InternalAuthError(
                Reason.UNBOUND_REQUEST, "token bound to another request", iss=iss
            )
        # Last on purpose: only an otherwise valid token earns a 403 instead of a 401.
        if isinstance(scope, str):  # one TokenScope (a StrEnum): the common case, no set built
            granted = scope if claimed_scope == scope.value else None
        else:
            granted = next((s for s in scope if claimed_scope == s.value), None)
        if granted is None:
            raise InternalAuthError(Reason.WRONG_SCOPE, "token scope not allowed here", iss=iss)
        # Only a token that passed every check is remembered, so refused garbage fills nothing.
        if self.replay_cache is not None:
            self.replay_cache.use(jti, exp + self._leeway, iss=iss)
        return Principal(
            sub=sub,
            scope=granted,
            roles=tuple(roles),
            sid=sid,
            jti=jti,
            iss=iss,
            iat=int(iat),
            exp=int(exp),
            pol=pol,
        )

    def __repr__(self) -> str:
        return f"Verifier(kids={self._keys.kids!r}, issuer={self._issuer!r})"


def _numeric_date(claims: dict[str, Any], name: str, iss: str) -> float:
    value = claims.get(name)
    if value is None:
        raise InternalAuthError(Reason.MISSING_CLAIM, f"claim {name} is missing", iss=iss)
    # RFC 7519 §2 NumericDate; bool is an int subclass in Python and must not pass.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InternalAuthError(Reason.INVALID_CLAIM, f"claim {name} is not a number", iss=iss)
    return float(value)


def _text_claim(claims: dict[str, Any], name: str, iss: str) -> str:
    value = claims.get(name)
    if value is None:
        raise InternalAuthError(Reason.MISSING_CLAIM, f"claim {name} is missing", iss=iss)
    if not isinstance(value, str) or not value:
        raise InternalAuthError(Reason.INVALID_CLAIM, f"claim {name} is not a string", iss=iss)
    return value


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
