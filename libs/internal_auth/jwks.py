"""The published key set, and a copy of it signed by every key in it.

``/.well-known/jwks.json`` is a plain JWK Set (RFC 7517 §5). ``/.well-known/jwks.jws`` is the
same document as the payload of a JWS in the general JSON serialization (RFC 7515 §7.2.1) with
one signature per key of the set, so a service that trusts any one of those keys can check that
the set came from the gateway, over plain HTTP: :func:`verify_signed_key_set`.

Each signature's protected header is ``{"alg": "EdDSA", "kid": <thumbprint>, "cty":
"jwk-set+json"}``; ``alg`` and ``cty`` are pinned on verification (RFC 8725 §3.1, §3.11: a
signed key set can never be taken for an internal token, whose ``typ`` is ``internal+jwt``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ._jws import ALGORITHM, REGISTRY, b64url_decode, b64url_encode
from .errors import KeyLoadError
from .keys import KeySet, PrivateKey, load_public_keys

__all__ = [
    "JWKS_CONTENT_TYPE",
    "MAX_SIGNED_SET_BYTES",
    "key_set_document",
    "signed_key_set",
    "verify_signed_key_set",
]

JWKS_CONTENT_TYPE = "application/jwk-set+json"
_CTY = "jwk-set+json"
#: Bounds on a fetched document: a set of a few keys is well under a kilobyte each.
MAX_SIGNED_SET_BYTES = 64 * 1024
MAX_SIGNATURES = 16


def key_set_document(keys: KeySet) -> bytes:
    """The JWK Set of ``keys`` as compact JSON bytes."""
    return json.dumps(keys.to_jwks(), separators=(",", ":"), sort_keys=True).encode("utf-8")


def signed_key_set(signers: Iterable[PrivateKey]) -> dict[str, Any]:
    """A JWS (general JSON serialization) whose payload is the JWK Set of ``signers``' public
    keys and which carries one signature by each of them."""
    signers = list(signers)
    payload = b64url_encode(key_set_document(KeySet(k.public_key for k in signers)))
    signatures = []
    for key in signers:
        protected = b64url_encode(
            json.dumps(
                {"alg": ALGORITHM, "cty": _CTY, "kid": key.kid}, separators=(",", ":")
            ).encode("utf-8")
        )
        signature = key._sign(protected + b"." + payload)
        signatures.append(
            {"protected": protected.decode("ascii"), "signature": b64url_encode(signature).decode()}
        )
    return {"payload": payload.decode("ascii"), "signatures": signatures}


def verify_signed_key_set(document: bytes | str, trusted: KeySet) -> KeySet:
    """The key set inside ``document`` if at least one of its signatures is by a key in
    ``trusted`` and verifies; :class:`KeyLoadError` otherwise.

    Signatures by keys ``trusted`` does not hold are skipped, not failed: a set signed by the
    old and the new key is accepted by a service that knows either.
    """
    if len(document) > MAX_SIGNED_SET_BYTES:
        raise KeyLoadError("the signed key set is too large")
    try:
        parsed = json.loads(document)
    except ValueError:
        raise KeyLoadError("the signed key set is not JSON") from None
    if not isinstance(parsed, dict) or set(parsed) != {"payload", "signatures"}:
        raise KeyLoadError("the signed key set is not a JWS in the general JSON serialization")
    payload, signatures = parsed["payload"], parsed["signatures"]
    if not isinstance(payload, str) or not isinstance(signatures, list):
        raise KeyLoadError("the signed key set is not a JWS in the general JSON serialization")
    if not signatures or len(signatures) > MAX_SIGNATURES:
        raise KeyLoadError(f"the signed key set needs 1 to {MAX_SIGNATURES} signatures")
    alg = REGISTRY.get_alg(ALGORITHM)
    for entry in signatures:
        if not isinstance(entry, dict) or set(entry) != {"protected", "signature"}:
            raise KeyLoadError("a signature entry must hold exactly 'protected' and 'signature'")
        protected, signature = entry["protected"], entry["signature"]
        if not isinstance(protected, str) or not isinstance(signature, str):
            raise KeyLoadError("a signature entry must hold strings")
        try:
            header = json.loads(b64url_decode(protected))
            raw_signature = b64url_decode(signature)
        except ValueError:
            raise KeyLoadError("a signature entry is not base64url JSON") from None
        if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
            raise KeyLoadError("a signature of the key set is not EdDSA")
        if header.get("cty") != _CTY or set(header) != {"alg", "cty", "kid"}:
            raise KeyLoadError("a signature header of the key set is not the expected one")
        kid = header.get("kid")
        key = trusted.get(kid) if isinstance(kid, str) else None
        if key is None:
            continue
        signing_input = protected.encode("ascii") + b"." + payload.encode("ascii")
        if alg.verify(signing_input, raw_signature, key._jwk):
            try:
                return load_public_keys(b64url_decode(payload))
            except ValueError:
                raise KeyLoadError("the signed key set's payload is not base64url") from None
        raise KeyLoadError("a signature by a trusted key does not verify")
    raise KeyLoadError("the key set is not signed by any trusted key")
