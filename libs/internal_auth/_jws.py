"""JWS plumbing for the one token shape we use: compact, ``alg: EdDSA``, Ed25519 keys.

Parsing and signature checks go through joserfc with a registry that allows ``EdDSA`` only
(RFC 8725 §3.1: the verifier, not the token, chooses the algorithm). Signing takes a lean path —
a header segment encoded once per key and the ``cryptography`` signer called directly — because
the gateway mints one token per proxied request and the header never changes.
"""

from __future__ import annotations

import base64
import binascii
import json
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from joserfc.errors import SecurityWarning
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry

__all__ = [
    "ALGORITHM",
    "REGISTRY",
    "TOKEN_TYPE",
    "b64url_decode",
    "b64url_encode",
    "encode_header",
    "sign_compact",
]

#: The only algorithm we sign with or accept. RFC 8037 §3.1 names Ed25519 signatures "EdDSA".
ALGORITHM = "EdDSA"
#: Explicit JOSE type of internal tokens (RFC 8725 §3.11, in the style of RFC 9068 §2.1).
TOKEN_TYPE = "internal+jwt"


def _resolve_eddsa() -> JWSAlgModel:
    # RFC 9864 deprecates the polymorphic "EdDSA" identifier in favour of "Ed25519", and joserfc
    # raises a SecurityWarning every time its registry hands out "EdDSA". We keep "EdDSA" on
    # purpose: it is what today's verifiers (PyJWT, most JOSE stacks) accept, and the key type is
    # pinned separately to an Ed25519 OKP key, so the algorithm is not ambiguous here. This is the
    # ONE place that warning is handled: resolved once, with only that message silenced, so it
    # never reaches users' logs or test runs, and every other joserfc warning still shows.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"EdDSA is deprecated via RFC 9864", category=SecurityWarning
        )
        return JWSRegistry(algorithms=[ALGORITHM]).get_alg(ALGORITHM)


class _EdDSAOnlyRegistry(JWSRegistry):
    """A joserfc registry that allows ``EdDSA`` and nothing else, without re-warning per call."""

    def __init__(self) -> None:
        super().__init__(algorithms=[ALGORITHM], strict_check_header=True)
        self._eddsa = _resolve_eddsa()

    def get_alg(self, name: str) -> JWSAlgModel:
        if name == ALGORITHM:
            return self._eddsa
        # Anything else goes to joserfc's own allow-list check, which refuses it.
        return super().get_alg(name)


#: The registry passed to every joserfc decode (an explicit allow-list, never the default).
REGISTRY: JWSRegistry = _EdDSAOnlyRegistry()


def b64url_encode(data: bytes) -> bytes:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(data: str | bytes) -> bytes:
    """Strict base64url without padding (RFC 7515 §2); ``ValueError`` on anything else."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    if b"=" in raw or len(raw) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        decoded = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    # The last character of an unpadded value carries 2 or 4 unused bits; decoders ignore them,
    # so up to 16 spellings decode to the same signature. Only the canonical one (unused bits
    # zero, RFC 4648 §3.5) is accepted: a token that is not the one minted never verifies.
    if b64url_encode(decoded) != raw:
        raise ValueError("not canonical base64url")
    return decoded


def encode_header(header: Mapping[str, Any]) -> bytes:
    """The protected-header segment, compact JSON, base64url (computed once per key)."""
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True)
    return b64url_encode(text.encode("ascii"))


def sign_compact(header_segment: bytes, payload: bytes, sign: Callable[[bytes], bytes]) -> str:
    """Build ``header.payload.signature`` (RFC 7515 §7.1) from a pre-encoded header segment."""
    signing_input = header_segment + b"." + b64url_encode(payload)
    return (signing_input + b"." + b64url_encode(sign(signing_input))).decode("ascii")
