"""DPoP proofs for tests, built with PyJWT and ``cryptography`` (not joserfc, the gateway's JOSE
library), so every DPoP test checks the gateway against an independent implementation.

``ProofKey("ES256")`` / ``ProofKey("EdDSA")`` / ``ProofKey("Ed25519")`` holds a private key;
``key.proof("GET", url, access_token=..., **overrides)`` signs one proof. Overrides replace or drop
(value ``None``) any claim; ``header=`` does the same for the JOSE header, which lets a test craft
the attacks (``alg: none``, a private ``jwk``, a wrong ``typ``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_MISSING = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


class ProofKey:
    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        if alg == "ES256":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            numbers = self.private.public_key().public_numbers()
            self.jwk: dict[str, Any] = {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")),
            }
            self._d = b64url(self.private.private_numbers().private_value.to_bytes(32, "big"))
        elif alg in ("EdDSA", "Ed25519"):
            self.private = ed25519.Ed25519PrivateKey.generate()
            raw = self.private.public_key().public_bytes_raw()
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
            self._d = b64url(self.private.private_bytes_raw())
        else:
            raise ValueError(alg)

    @property
    def private_jwk(self) -> dict[str, Any]:
        return {**self.jwk, "d": self._d}

    @property
    def thumbprint(self) -> str:
        """RFC 7638, computed here independently of the gateway's code."""
        members = ("crv", "kty", "x", "y") if self.jwk["kty"] == "EC" else ("crv", "kty", "x")
        canonical = json.dumps({m: self.jwk[m] for m in members}, separators=(",", ":"))
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        payload: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": url,
            "iat": int(time.time()),
        }
        if access_token is not None:
            payload["ath"] = ath(access_token)
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        head: dict[str, Any] = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}
        head.update(header or {})
        head = {k: v for k, v in head.items() if v is not None}
        if self.alg == "Ed25519" or head["alg"] != self.alg:
            return self._sign_by_hand(head, payload)
        extra = {k: v for k, v in head.items() if k != "alg"}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=extra)

    def _sign_by_hand(self, head: dict[str, Any], payload: dict[str, Any]) -> str:
        """Compact JWS by hand: for the RFC 9864 name PyJWT does not know, and for attacks."""
        signing_input = (
            b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(payload).encode())
        ).encode()
        if head["alg"] == "none":
            return signing_input.decode() + "."
        if self.jwk["kty"] == "OKP":
            signature = self.private.sign(signing_input)
        else:
            r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes_sha256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input.decode() + "." + b64url(signature)


def hashes_sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()
