"""Ed25519 keys: generate, load (PEM, ``\\n``-escaped PEM, JWKS, files), key sets by ``kid``.

Only Ed25519 is accepted (RFC 8037 §2, ``kty: OKP``, ``crv: Ed25519``). Anything else — RSA, EC,
Ed448, an HMAC secret — is a :class:`KeyLoadError` at start-up rather than a surprise at the first
request. The verifying side must never hold private material, so public-key loaders refuse it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc.jwk import OKPKey

from ._jws import ALGORITHM, REGISTRY, b64url_decode, b64url_encode
from .errors import KeyLoadError

__all__ = [
    "KeySet",
    "PrivateKey",
    "PublicKey",
    "generate_private_key",
    "load_private_key",
    "load_private_key_file",
    "load_public_keys",
    "load_public_keys_file",
]

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL | re.ASCII
)


class PublicKey:
    """An Ed25519 public key that can verify internal tokens, never sign them.

    ``kid`` is the RFC 7638 thumbprint of the key's JWK (RFC 8037 §2 members ``crv``, ``kty``,
    ``x``), so gateway and backend agree on key ids without configuring any.
    """

    __slots__ = ("_jwk", "_key", "kid")

    def __init__(self, key: Ed25519PublicKey) -> None:
        if not isinstance(key, Ed25519PublicKey):
            raise KeyLoadError(f"expected an Ed25519 public key, got {_describe(key)}")
        self._key = key
        self._jwk: OKPKey = OKPKey.import_key(key)
        # Pin the key type once (OKP, usable for "sig" with "EdDSA"), so verifying needs no
        # per-token key checks.
        REGISTRY.get_alg(ALGORITHM).check_key(self._jwk)
        #: RFC 7638 JWK thumbprint (SHA-256, base64url), used as the JOSE ``kid``.
        self.kid: str = self._jwk.thumbprint()

    def public_pem(self) -> str:
        """The key as a ``PUBLIC KEY`` (SubjectPublicKeyInfo) PEM block."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def to_jwk(self) -> dict[str, str]:
        """The public JWK (RFC 8037 §2) with ``kid``, ``alg: EdDSA`` and ``use: sig``."""
        raw = self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url_encode(raw).decode("ascii"),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.kid == self.kid

    def __hash__(self) -> int:
        return hash(self.kid)

    def __repr__(self) -> str:
        return f"PublicKey(kid={self.kid!r})"


class PrivateKey:
    """An Ed25519 private key: the gateway's signer for internal tokens.

    Sign through :class:`internal_auth.Minter`; this class exposes no general-purpose signing
    method, so key material cannot be used to sign arbitrary data by accident. ``repr`` shows
    only the ``kid``.
    """

    __slots__ = ("_key", "kid", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyLoadError(f"expected an Ed25519 private key, got {_describe(key)}")
        self._key = key
        #: The matching public key, to hand to verifiers.
        self.public_key: PublicKey = PublicKey(key.public_key())
        #: RFC 7638 thumbprint of the public key; the ``kid`` header of minted tokens.
        self.kid: str = self.public_key.kid

    def private_pem(self) -> str:
        """The key as an unencrypted PKCS#8 ``PRIVATE KEY`` PEM block (treat as a secret)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def public_pem(self) -> str:
        """The public half as a ``PUBLIC KEY`` PEM block."""
        return self.public_key.public_pem()

    def _sign(self, data: bytes) -> bytes:
        # Private on purpose: only the Minter signs, and only token signing inputs.
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"PrivateKey(kid={self.kid!r})"


class KeySet:
    """Public keys by ``kid``: what a verifier trusts. Several keys allow rotation.

    To rotate: add the new public key to every verifier, switch the gateway to the new private
    key, then remove the old public key once the longest token lifetime (60 s) has passed.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        found: dict[str, PublicKey] = {}
        for key in keys:
            if isinstance(key, PrivateKey):
                raise KeyLoadError("a key set holds public keys only; pass private_key.public_key")
            if not isinstance(key, PublicKey):
                raise KeyLoadError(f"a key set holds PublicKey objects, got {type(key).__name__}")
            found[key.kid] = key
        if not found:
            raise KeyLoadError("a key set needs at least one public key")
        self._keys = found

    def get(self, kid: str) -> PublicKey | None:
        """The key whose RFC 7638 thumbprint is ``kid``, or ``None``."""
        return self._keys.get(kid)

    @property
    def kids(self) -> tuple[str, ...]:
        """The ``kid`` of every key, in the order given."""
        return tuple(self._keys)

    def to_jwks(self) -> dict[str, list[dict[str, str]]]:
        """A JWK Set document (RFC 7517 §5) of the public keys."""
        return {"keys": [key.to_jwk() for key in self._keys.values()]}

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        return f"KeySet(kids={self.kids!r})"


def generate_private_key() -> PrivateKey:
    """A fresh random Ed25519 key pair."""
    return PrivateKey(Ed25519PrivateKey.generate())


def load_private_key(text: str | bytes) -> PrivateKey:
    """Load the gateway's signing key from PKCS#8 PEM text.

    Accepts the PEM as is, with surrounding quotes, or in the one-line form with literal ``\\n``
    escapes that ``.env`` files force. Raises :class:`KeyLoadError` for a public key (it cannot
    sign), an encrypted key, or any key that is not Ed25519 (RSA, EC, Ed448, an HMAC/oct JWK).
    """
    pem = _normalise(text)
    if pem.startswith("{"):
        raise KeyLoadError(_describe_jwk_text(pem, expected="an Ed25519 private key in PEM form"))
    blocks = _pem_blocks(pem)
    if len(blocks) != 1:
        raise KeyLoadError(f"expected exactly one PEM block, found {len(blocks)}")
    label, block = blocks[0]
    if "PRIVATE KEY" not in label:
        raise KeyLoadError(
            f"expected a PRIVATE KEY block, found {label!r}: a public key cannot sign"
        )
    try:
        key = serialization.load_pem_private_key(block.encode("ascii"), password=None)
    except TypeError:
        raise KeyLoadError("the private key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyLoadError("the private key PEM cannot be parsed") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyLoadError(f"expected an Ed25519 private key, got {_describe(key)}")
    return PrivateKey(key)


def load_public_keys(text: str | bytes) -> KeySet:
    """Load the verifier's trusted keys: one or more public PEM blocks, or a JWK / JWK Set.

    PEM may be ``\\n``-escaped on one line, as with :func:`load_private_key`. Raises
    :class:`KeyLoadError` for private key material anywhere in the input (the verifying service
    must hold public keys only), for non-Ed25519 keys, and for a JWK whose ``kid`` is not its
    RFC 7638 thumbprint (it would never match a token's ``kid``).
    """
    normalised = _normalise(text)
    if normalised.startswith("{"):
        return KeySet(_keys_from_jwk_text(normalised))
    blocks = _pem_blocks(normalised)
    if not blocks:
        raise KeyLoadError("expected PUBLIC KEY PEM block(s) or a JWKS document")
    keys: list[PublicKey] = []
    for label, block in blocks:
        if "PRIVATE" in label:
            raise KeyLoadError(
                "private key material given where only public keys belong; "
                "configure the public key (tokengate keys generate prints it)"
            )
        if label != "PUBLIC KEY":
            raise KeyLoadError(f"unsupported PEM block {label!r}; expected PUBLIC KEY")
        try:
            key = serialization.load_pem_public_key(block.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm):
            raise KeyLoadError("a public key PEM block cannot be parsed") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyLoadError(f"expected an Ed25519 public key, got {_describe(key)}")
        keys.append(PublicKey(key))
    return KeySet(keys)


def load_private_key_file(path: str | Path) -> PrivateKey:
    """:func:`load_private_key` on the contents of a file."""
    return load_private_key(_read(path))


def load_public_keys_file(path: str | Path) -> KeySet:
    """:func:`load_public_keys` on the contents of a file."""
    return load_public_keys(_read(path))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyLoadError(f"cannot read key file {str(path)!r}: {type(exc).__name__}") from None


def _normalise(text: str | bytes) -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyLoadError("key material is not UTF-8 text") from None
    if not isinstance(text, str):
        raise KeyLoadError(f"key material must be str or bytes, got {type(text).__name__}")
    text = text.strip()
    # .env files and shells often keep the quotes, and many env-file formats cannot hold a
    # newline, so PEM arrives as one line with literal "\n" escapes.
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if "-----BEGIN" in text:
        text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n")
    if not text:
        raise KeyLoadError("key material is empty")
    return text


def _pem_blocks(text: str) -> list[tuple[str, str]]:
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]
    if _PEM_BLOCK.sub("", text).strip():
        raise KeyLoadError("unexpected text outside PEM blocks")
    return blocks


def _keys_from_jwk_text(text: str) -> list[PublicKey]:
    try:
        document = json.loads(text)
    except ValueError:
        raise KeyLoadError("the JWKS document is not valid JSON") from None
    if isinstance(document, dict) and "keys" in document:
        entries = document["keys"]
    elif isinstance(document, dict) and "kty" in document:
        entries = [document]
    else:
        raise KeyLoadError('expected a JWK Set ({"keys": [...]}) or a single JWK')
    if not isinstance(entries, list) or not entries:
        raise KeyLoadError('the JWK Set has no "keys"')
    return [_public_key_from_jwk(entry) for entry in entries]


def _public_key_from_jwk(jwk: Any) -> PublicKey:
    if not isinstance(jwk, dict):
        raise KeyLoadError("each JWK must be a JSON object")
    problem = _jwk_problem(jwk, expected="an Ed25519 public key")
    if problem:
        raise KeyLoadError(problem)
    if "d" in jwk:
        raise KeyLoadError(
            "private key material (JWK member 'd') given where only public keys belong"
        )
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", ALGORITHM) not in (ALGORITHM, "Ed25519"):
        raise KeyLoadError("the JWK is not meant for EdDSA signatures ('use'/'alg')")
    x = jwk.get("x")
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyLoadError("the JWK member 'x' is not a base64url Ed25519 public key")
    key = PublicKey(Ed25519PublicKey.from_public_bytes(raw))
    kid = jwk.get("kid")
    if kid is not None and kid != key.kid:
        raise KeyLoadError("the JWK 'kid' is not its RFC 7638 thumbprint; omit it or fix it")
    return key


def _jwk_problem(jwk: Mapping[str, Any], *, expected: str) -> str | None:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return None
    if kty == "oct":
        return f"expected {expected}, got a symmetric (HMAC) key"
    if kty in ("RSA", "EC", "OKP"):
        return f"expected {expected}, got {kty} {crv or ''}".rstrip()
    return f"expected {expected}, got a JWK of unknown type"


def _describe_jwk_text(text: str, *, expected: str) -> str:
    try:
        document = json.loads(text)
    except ValueError:
        return f"expected {expected}"
    if isinstance(document, dict):
        return _jwk_problem(document, expected=expected) or f"expected {expected}, got a JWK"
    return f"expected {expected}"


def _describe(key: object) -> str:
    # Names the kind of key without ever printing its material.
    kinds: tuple[tuple[tuple[type, ...], str], ...] = (
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "RSA"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "EC"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "Ed448"),
        ((Ed25519PrivateKey,), "Ed25519 private"),
        ((Ed25519PublicKey,), "Ed25519 public"),
    )
    for types, name in kinds:
        if isinstance(key, types):
            return f"{name} key"
    return type(key).__name__
