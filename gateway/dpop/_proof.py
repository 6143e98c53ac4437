"""DPoP (RFC 9449): tokens bound to a key the client holds, checked with a proof per request.

A client makes a key pair and signs a short JWT (the *proof*) for every request: its public key in
the header (``jwk``), the method and URL it is for (``htm``, ``htu``), when (``iat``), a random
``jti``, and, with an access token, ``ath`` (the token's SHA-256). The gateway puts the key's RFC
7638 thumbprint in the tokens it issues (``cnf.jkt``, RFC 9449 §6) and in the refresh family, so a
stolen token is useless without the private key.

Checks, in the order of RFC 9449 §4.3 (every one fails closed):

- exactly one ``DPoP`` header holding one compact JWS of bounded size;
- ``typ: dpop+jwt``; ``alg`` pinned to :data:`ALGORITHMS` (ES256 on P-256; EdDSA on Ed25519, also
  under its fully specified name ``Ed25519``, RFC 9864), so ``none`` and HMAC are refused before
  the signature is looked at, and the algorithm must fit the key type;
- ``jwk`` is a public key of that type: private members (``d``...) are refused; what browsers add
  (``alg``, ``ext``, ``key_ops``) is ignored, only the required members are used;
- the signature verifies with that key;
- ``htm`` is the request's method, ``htu`` is one of the gateway's public origins
  (``PUBLIC_ORIGIN``) plus the request path, compared without query and fragment after RFC 3986
  normalisation;
- ``iat`` within ``DPOP_IAT_WINDOW`` seconds of the gateway's clock, either way;
- ``ath`` when an access token comes with the proof, and the proof's key is the one in ``cnf.jkt``;
- the server nonce (§8), when ``DPOP_NONCE_REQUIRED`` is on;
- the ``jti`` was never seen before by *any* gateway instance: it is claimed in Redis with
  ``SET NX`` for as long as the proof could still pass the ``iat`` check. While Redis cannot answer,
  DPoP requests fail closed (503 with ``Retry-After``) rather than risk accepting a replay.

Nonces are derived, not stored: ``HMAC(key, period)`` where ``period`` is the current time divided
by ``DPOP_NONCE_ROTATION``; the key is ``DPOP_NONCE_SECRET`` or, when unset, derived one-way from
``JWT_ACCESS_SECRET``. Every instance sharing that configuration computes the same nonces with no
state and no I/O; the current and the previous period's nonce are accepted so a rotation never
fails a client that has just been handed the old one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from redis.asyncio.connection import AbstractConnection
from servicekit.logs import log_event

from gateway import metrics
from gateway.errors import GatewayError, ServiceUnavailable
from gateway.settings import Settings

logger = logging.getLogger("gateway.dpop")

#: The proof algorithms accepted (RFC 9449 §4.3 check 5: asymmetric, and supported). ``EdDSA`` and
#: ``Ed25519`` (RFC 9864) both mean Ed25519 here; Ed448 is refused by the key check below.
ALGORITHMS = ("ES256", "EdDSA", "Ed25519")
ALGS_PARAM = " ".join(ALGORITHMS)
PROOF_TYP = "dpop+jwt"
MAX_PROOF_LENGTH = 4096
MAX_JTI_LENGTH = 256
_KEY_TYPE_FOR_ALG = {
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
}
#: RFC 7638 §3.2: the thumbprint covers the key type's *required* members only, in this order.
_REQUIRED_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
#: Private-key members of any JWK type (RFC 7518 §6, RFC 8037 §2): a ``jwk`` holding one is a
#: leaked key, refused (RFC 9449 §4.3 check 6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KEY_CACHE_SIZE = 4096
_HTU_CACHE_SIZE = 4096
# base64url -> base64, and the standard alphabet's own '+' and '/' made invalid so strict mode
# refuses them in a base64url value
_FROM_URLSAFE = bytes.maketrans(b"-_+/", b"+/\x00\x00")
_NONCE_LABEL = b"tokengate-dpop-nonce\x00"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token's ASCII bytes (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint over the required members only (JSON, sorted, no spaces)."""
    members = _REQUIRED_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


class ProofError(Exception):
    """A proof failed a check; ``reason`` is for logs, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NonceRequired(ProofError):
    """The proof lacks the current server nonce (RFC 9449 §8): retry with ``DPoP-Nonce``."""


# -- errors as the client sees them ----------------------------------------------------------------


def challenge(error: str | None = None, description: str | None = None) -> str:
    """A ``WWW-Authenticate: DPoP`` challenge with the accepted algorithms (RFC 9449 §7.1)."""
    params = []
    if error:
        params.append(f'error="{error}"')
    if description:
        params.append(f'error_description="{description}"')
    params.append(f'algs="{ALGS_PARAM}"')
    return "DPoP " + ", ".join(params)


class InvalidDPoPProof(GatewayError):
    """At the token endpoints (login, refresh, logout): 400 ``invalid_dpop_proof`` (§5)."""

    status = 400
    code = "invalid_dpop_proof"
    message = "DPoP proof is missing or invalid"


class UseDPoPNonce(GatewayError):
    """At the token endpoints: 400 ``use_dpop_nonce`` with the nonce to use (§8)."""

    status = 400
    code = "use_dpop_nonce"
    message = "retry with the nonce in the DPoP-Nonce header"


class DPoPUnauthorized(GatewayError):
    """At a protected resource: 401 with a ``WWW-Authenticate: DPoP`` challenge (§7.1)."""

    status = 401
    code = "invalid_dpop_proof"
    message = "DPoP proof is missing or invalid"


# -- nonces --------------------------------------------------------------------------------------


class Nonces:
    """Stateless rotating nonces: the same on every instance that shares the key."""

    def __init__(self, key: bytes, rotation: int, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._rotation = rotation
        self._clock = clock
        self._cache: dict[int, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Nonces:
        if settings.dpop_nonce_secret:
            key = settings.dpop_nonce_secret.encode("utf-8")
        else:
            # one-way and domain-separated: the nonce key reveals nothing of the access secret
            key = hmac.new(
                settings.jwt_access_secret.encode("utf-8"), b"tokengate-dpop-nonce-key", "sha256"
            ).digest()
        return cls(key, settings.dpop_nonce_rotation)

    def _for(self, period: int) -> str:
        nonce = self._cache.get(period)
        if nonce is None:
            mac = hmac.new(self._key, _NONCE_LABEL + str(period).encode(), "sha256").digest()
            nonce = b64url(mac[:18])
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[period] = nonce
        return nonce

    def current(self) -> str:
        return self._for(int(self._clock()) // self._rotation)

    def accepts(self, nonce: object) -> bool:
        if not isinstance(nonce, str):
            return False
        period = int(self._clock()) // self._rotation
        # constant time: a nonce is not a secret, but there is no reason to leak its prefix
        return any(hmac.compare_digest(nonce, self._for(p)) for p in (period, period - 1))


# -- proofs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proof:
    jkt: str
    jti: str
    iat: int


# The characters RFC 3986 §2 lets a URI hold (unreserved, reserved, "%"). urlsplit() silently
# strips surrounding spaces and C0 controls and deletes tab, CR and LF anywhere (bpo-43882), so an
# htu of "https://gw/path\n" used to match "https://gw/path": anything outside this set is not
# the URI the proof was made for.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
# A port is a decimal number without leading zeros (":0443" is not how anyone spells 443), and
# not 0; an empty port (RFC 3986 §6.2.3) means the default.
_PORT = re.compile(r"(?:[1-9][0-9]{0,4})?")


def normalise_htu(value: str) -> str | None:
    """``scheme://host[:port]/path`` lower-cased where RFC 3986 §6.2.2-6.2.3 allows, default port
    dropped, query and fragment removed (RFC 9449 §4.3 check 9); ``None`` if it is not a URL, or
    if it carries anything a normalisation would have to guess at: userinfo, a port with leading
    zeros, a character a URI cannot hold."""
    if not _URI_CHARS.fullmatch(value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    # userinfo: the origin the client names is the host after it, and a proof with one is not
    # for the URL the request came in on (RFC 9110 §4.2.4 deprecates userinfo in http(s) URIs)
    if "@" in parts.netloc:
        return None
    if not _PORT.fullmatch(parts.netloc.rpartition("]")[2].partition(":")[2]):
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 80 if scheme == "http" else 443
    netloc = host + (f":{port}" if port and port != default else "")
    return f"{scheme}://{netloc}{_normalise_path(parts.path or '/')}"


def _normalise_path(path: str) -> str:
    # percent-encodings compare case-insensitively (%2f == %2F); upper-case them
    if "%" not in path:
        return path
    out = []
    i = 0
    while i < len(path):
        if path[i] == "%" and len(path[i + 1 : i + 3]) == 2:
            out.append("%" + path[i + 1 : i + 3].upper())
            i += 3
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


class _PublicKey:
    """A proof key imported once: its thumbprint and a ``verify(signature, data)``."""

    __slots__ = ("jkt", "verify")

    def __init__(self, public: dict[str, str]) -> None:
        self.jkt = jwk_thumbprint(public)
        if public["kty"] == "OKP":
            ed = Ed25519PublicKey.from_public_bytes(_b64decode(public["x"], 32))

            def verify_ed25519(signature: bytes, data: bytes) -> None:
                ed.verify(signature, data)

            self.verify: Callable[[bytes, bytes], None] = verify_ed25519
        else:
            point = ec.EllipticCurvePublicNumbers(
                int.from_bytes(_b64decode(public["x"], 32), "big"),
                int.from_bytes(_b64decode(public["y"], 32), "big"),
                ec.SECP256R1(),
            )
            # raises ValueError for a point that is not on the curve
            p256 = point.public_key()

            def verify_es256(signature: bytes, data: bytes) -> None:
                # JWS carries r||s (RFC 7518 §3.4); cryptography wants DER
                if len(signature) != 64:
                    raise InvalidSignature()
                r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                p256.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))

            self.verify = verify_es256


def _b64decode(value: str, length: int | None = None) -> bytes:
    """Strict base64url without padding (RFC 7515 §2); ``length`` pins the decoded size."""
    # binascii's strict mode refuses anything outside the alphabet (what b64decode's validate
    # does) without base64's argument juggling; the translation maps base64url onto it first.
    try:
        padded = value.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(value) % 4)
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except (ValueError, TypeError):
        raise ProofError("malformed") from None
    # only the canonical spelling (unused trailing bits zero, RFC 4648 §3.5), as internal_auth
    if b64url(raw) != value:
        raise ProofError("malformed")
    if length is not None and len(raw) != length:
        raise ProofError("jwk")
    return raw


class ProofVerifier:
    """Checks one proof against one request; no I/O (the ``jti`` is claimed by the caller).

    The signature is checked with ``cryptography`` directly, as ``internal_auth`` does: the
    algorithm allow-list is :data:`ALGORITHMS` and the key type each one needs, enforced here
    before any key is built; imported keys are kept by their public members, because a client
    signs every proof with the same key and importing costs as much as verifying.
    """

    def __init__(
        self,
        *,
        public_origins: Sequence[str],
        iat_window: int,
        nonces: Nonces | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.public_origins = tuple(public_origins)
        self.iat_window = iat_window
        self.nonces = nonces
        self._clock = clock
        self._keys: dict[tuple[object, ...], _PublicKey] = {}
        self._htu_verdicts: dict[tuple[str, str], bool] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.public_origins)

    def verify(
        self, proof: str, *, method: str, path: str, access_token: str | None = None
    ) -> Proof:
        if not self.enabled:
            raise ProofError("dpop_disabled")
        if not isinstance(proof, str) or not proof or len(proof) > MAX_PROOF_LENGTH:
            raise ProofError("malformed")
        parts = proof.split(".")
        if len(parts) != 3:
            raise ProofError("malformed")
        try:
            header = json.loads(_b64decode(parts[0]))
        except (ValueError, RecursionError):
            # RecursionError: a header of 3,000 "[" fits in MAX_PROOF_LENGTH and, read before any
            # signature check, was a 500 at /auth/login for anyone (issue 21, finding 1's class).
            raise ProofError("malformed") from None
        if not isinstance(header, dict):
            raise ProofError("malformed")
        if header.get("typ") != PROOF_TYP:
            raise ProofError("typ")
        alg = header.get("alg")
        if alg not in _KEY_TYPE_FOR_ALG:
            raise ProofError("alg")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise ProofError("jwk")
        key = self._key(jwk, alg)
        try:
            key.verify(_b64decode(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"))
        except (InvalidSignature, ValueError, UnicodeError):
            raise ProofError("signature") from None
        try:
            claims = json.loads(_b64decode(parts[1]))
        except (ValueError, RecursionError):
            raise ProofError("malformed") from None
        if not isinstance(claims, dict):
            raise ProofError("malformed")
        jti, htm, htu, iat = (claims.get(n) for n in ("jti", "htm", "htu", "iat"))
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise ProofError("jti")
        if htm != method:
            raise ProofError("htm")
        if not isinstance(htu, str) or not self._htu_matches(htu, path):
            raise ProofError("htu")
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise ProofError("iat")
        if abs(iat - self._clock()) > self.iat_window:
            raise ProofError("iat_window")
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not hmac.compare_digest(
                ath, access_token_hash(access_token)
            ):
                raise ProofError("ath")
        if self.nonces is not None and not self.nonces.accepts(claims.get("nonce")):
            raise NonceRequired("nonce")
        return Proof(jkt=key.jkt, jti=jti, iat=iat)

    def expected_htu(self, path: str) -> list[str]:
        return [origin + _normalise_path(path or "/") for origin in self.public_origins]

    def _htu_matches(self, htu: str, path: str) -> bool:
        # A client sends the same few URLs over and over, and RFC 3986 parsing costs a tenth of
        # the whole proof check: the verdict is memoised (pure in htu and path; bounded).
        verdict = self._htu_verdicts.get((htu, path))
        if verdict is None:
            got = normalise_htu(htu)
            verdict = got is not None and got in self.expected_htu(path)
            if len(self._htu_verdicts) >= _HTU_CACHE_SIZE:
                self._htu_verdicts.clear()
            self._htu_verdicts[htu, path] = verdict
        return verdict

    def _key(self, jwk: dict[str, Any], alg: str) -> _PublicKey:
        # RFC 9449 §4.3 check 6: a jwk holding private material is a leaked key
        if _PRIVATE_MEMBERS & jwk.keys():
            raise ProofError("jwk_private")
        kty, crv = _KEY_TYPE_FOR_ALG[alg]
        if jwk.get("kty") != kty or jwk.get("crv") != crv:
            raise ProofError("jwk_type")
        # only the required members count (browsers add alg, ext, key_ops: ignored)
        members = _REQUIRED_MEMBERS[kty]
        values = tuple(jwk.get(m) for m in members)
        # validated before the cache lookup: a list or dict member would not even hash
        if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in values):
            raise ProofError("jwk")
        cached = self._keys.get(values)
        if cached is not None:
            return cached
        public = {m: str(v) for m, v in zip(members, values, strict=True)}
        try:
            key = _PublicKey(public)
        except ValueError:
            raise ProofError("jwk") from None
        if len(self._keys) >= _KEY_CACHE_SIZE:
            del self._keys[next(iter(self._keys))]
        self._keys[values] = key
        return key


# -- the replay cache ------------------------------------------------------------------------------


class ReplayCache:
    """``jti`` values already used, shared by every gateway instance through Redis.

    One ``SET key 1 NX EX ttl`` per proof: it succeeds only for the first instance to see the
    proof. The cache keeps one Redis connection of its own (made by the shared client's pool, so
    with the same URL, credentials, TLS and timeouts) and talks to it directly: redis-py's pool
    and command layer cost about twice the round trip itself on this path (``bench/README.md``).

    Invariants:

    - at most one round trip is in flight on the connection; claims made meanwhile are queued and
      go out together as one pipeline when it returns, so under concurrency many proofs share a
      round trip, and a lone request goes out at once (no timer, no added wait);
    - a claim is True only on Redis's own ``OK``; every failure (refused, reset, timed out, an
      error reply) fails every claim of that round trip closed (503) and drops the connection,
      so the next claim starts on a fresh one and nothing half-read is ever trusted.
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str, iat_window: int) -> None:
        self._redis = redis
        self._prefix = prefix + "dpop:jti:"
        self._window = iat_window
        self._connection: AbstractConnection | None = None
        self._pending: list[tuple[str, int, asyncio.Future[bool]]] = []
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: round trips made and claims sent (the benchmark reports their ratio)
        self.round_trips = 0
        self.claims = 0

    async def claim(self, proof: Proof, *, now: float | None = None) -> bool:
        """True the first time a proof is seen, False for a replay; 503 if Redis is down.

        The entry lives exactly as long as the proof could pass the ``iat`` check (its ``iat``
        plus the window), so the cache holds at most one window's worth of proofs.
        """
        now = time.time() if now is None else now
        ttl = max(int(proof.iat + self._window - now) + 1, 1)
        # keyed by key and jti together, so one client cannot burn another's jti values
        digest = hashlib.sha256(f"{proof.jkt}\x00{proof.jti}".encode()).digest()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((self._prefix + b64url(digest[:18]), ttl, future))
        if not self._draining:
            # Nothing in flight: this request sends its own claim (no task for the common, lone
            # case); whatever queues up meanwhile is drained by a task, so no request waits for
            # round trips that are not its own.
            self._draining = True
            batch, self._pending = self._pending, []
            try:
                await self._send(batch)
            finally:
                self._drain_rest()
        return await future

    def _drain_rest(self) -> None:
        if not self._pending:
            self._draining = False
            return
        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._draining = False

    async def _send(self, batch: list[tuple[str, int, asyncio.Future[bool]]]) -> None:
        try:
            results = await self._round_trip([(key, ttl) for key, ttl, _ in batch])
        except BaseException as exc:  # fail closed whatever went wrong: no claim, no request
            # a cancelled or failed round trip leaves replies unread: never reuse the connection
            await self.close()
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(ServiceUnavailable(retry_after=2))
            if not isinstance(exc, Exception):
                raise
            metrics.redis_error("dpop_replay")
            log_event(
                logger, "dpop_replay_cache_unavailable", logging.WARNING, error=type(exc).__name__
            )
            return
        self.round_trips += 1
        self.claims += len(batch)
        metrics.dpop_replay_round_trip(len(batch))
        for (_, _, future), fresh in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(fresh)

    async def _round_trip(self, claims: list[tuple[str, int]]) -> list[bool]:
        connection = self._connection
        if connection is None:
            # redis-py leaves make_connection unannotated; it returns the pool's connection class
            pool = self._redis.connection_pool
            connection = self._connection = pool.make_connection()  # type: ignore[no-untyped-call]
            # connect() itself: with a Sentinel-managed pool it asks Sentinel for the master,
            # whereas send_packed_command's implicit connect (redis-py 7.4) would not
            await connection.connect()
        commands = [("SET", key, b"1", "NX", "EX", ttl) for key, ttl in claims]
        await connection.send_packed_command(connection.pack_commands(commands))
        # b"OK" (or "OK" with decode_responses) for a first claim, None when the key existed
        return [await connection.read_response() is not None for _ in commands]

    async def close(self) -> None:
        """Drop the cache's connection (the next claim opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)


class DPoP:
    """What the routes and the proxy use: verify a proof, then claim its ``jti``."""

    def __init__(self, verifier: ProofVerifier, replay: ReplayCache) -> None:
        self.verifier = verifier
        self.replay = replay

    @classmethod
    def from_settings(cls, settings: Settings, redis: aioredis.Redis) -> DPoP:
        nonces = Nonces.from_settings(settings) if settings.dpop_nonce_required else None
        verifier = ProofVerifier(
            public_origins=settings.public_origins,
            iat_window=settings.dpop_iat_window,
            nonces=nonces,
        )
        return cls(
            verifier,
            ReplayCache(
                redis, prefix=settings.redis_key_prefix, iat_window=settings.dpop_iat_window
            ),
        )

    @property
    def enabled(self) -> bool:
        return self.verifier.enabled

    async def close(self) -> None:
        """Close the replay cache's own Redis connection (gateway shutdown)."""
        await self.replay.close()

    def nonce_headers(self) -> dict[str, str]:
        """``DPoP-Nonce`` for a response when nonces are on (§8.2: any response may carry it)."""
        nonces = self.verifier.nonces
        return {"DPoP-Nonce": nonces.current()} if nonces is not None else {}

    async def check(
        self,
        proofs: Sequence[str],
        *,
        method: str,
        path: str,
        access_token: str | None = None,
        jkt: str | None = None,
    ) -> Proof:
        """Verify the request's proof (signed by ``jkt``'s key when given), then claim its
        ``jti``; :class:`ProofError` otherwise. The claim comes last so a proof that fails any
        other check does not use up a ``jti``."""
        if len(proofs) != 1:
            raise ProofError("header_count")
        proof = self.verifier.verify(proofs[0], method=method, path=path, access_token=access_token)
        if jkt is not None and not hmac.compare_digest(proof.jkt, jkt):
            raise ProofError("jkt")
        if not await self.replay.claim(proof):
            raise ProofError("replay")
        metrics.dpop_proof("ok")
        return proof

    async def for_token_endpoint(self, proofs: Sequence[str], *, method: str, path: str) -> Proof:
        """Login, refresh, logout: errors as in RFC 9449 §5 (400 with an error code)."""
        try:
            return await self.check(proofs, method=method, path=path)
        except NonceRequired:
            metrics.dpop_proof("nonce")
            raise UseDPoPNonce(headers=self.nonce_headers()) from None
        except ProofError as exc:
            metrics.dpop_proof(exc.reason)
            log_event(logger, "dpop_proof_refused", reason=exc.reason, path=path)
            raise InvalidDPoPProof(headers=self.nonce_headers()) from None

    async def for_resource(
        self, proofs: Sequence[str], *, method: str, path: str, access_token: str, jkt: str
    ) -> Proof:
        """A protected resource: 401 with ``WWW-Authenticate: DPoP`` (RFC 9449 §7.1, §9)."""
        try:
            return await self.check(
                proofs, method=method, path=path, access_token=access_token, jkt=jkt
            )
        except NonceRequired:
            metrics.dpop_proof("nonce")
            raise DPoPUnauthorized(
                "retry with the nonce in the DPoP-Nonce header",
                headers={
                    "WWW-Authenticate": challenge("use_dpop_nonce", "a server nonce is required"),
                    **self.nonce_headers(),
                },
            ) from None
        except ProofError as exc:
            metrics.dpop_proof(exc.reason)
            log_event(logger, "dpop_proof_refused", reason=exc.reason, path=path)
            raise DPoPUnauthorized(
                headers={
                    "WWW-Authenticate": challenge("invalid_dpop_proof"),
                    **self.nonce_headers(),
                }
            ) from None
