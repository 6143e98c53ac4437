"""The client's DPoP key and the proofs it signs (RFC 9449 §4.2)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any, Literal

from joserfc import jws
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry

Algorithm = Literal["Ed25519", "ES256"]

# Only what this client signs with: Ed25519 under its fully specified name (RFC 9864) and ES256.
_REGISTRY = JWSRegistry(algorithms=["Ed25519", "ES256"])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class DPoPKey:
    """A private key that never leaves this object; proofs carry only its public half."""

    def __init__(self, key: OKPKey | ECKey, alg: Algorithm) -> None:
        if not key.is_private:
            raise ValueError("a DPoP key must be a private key")
        self._key = key
        self.alg: Algorithm = alg
        members = ("crv", "kty", "x") if alg == "Ed25519" else ("crv", "kty", "x", "y")
        public = key.as_dict(private=False)
        #: the public JWK sent in every proof: the required members only
        self.public_jwk: dict[str, Any] = {m: public[m] for m in members}
        canonical = json.dumps(self.public_jwk, separators=(",", ":"), sort_keys=True)
        #: RFC 7638 thumbprint: what the gateway puts in ``cnf.jkt``
        self.thumbprint = _b64url(hashlib.sha256(canonical.encode()).digest())

    @classmethod
    def generate(cls, alg: Algorithm = "Ed25519") -> DPoPKey:
        if alg == "Ed25519":
            return cls(OKPKey.generate_key("Ed25519"), alg)
        if alg == "ES256":
            return cls(ECKey.generate_key("P-256"), alg)
        raise ValueError(f"unsupported DPoP algorithm {alg!r}")

    @classmethod
    def from_pem(cls, pem: bytes) -> DPoPKey:
        """Load a key kept from an earlier run (``to_pem``): an Ed25519 or P-256 private key."""
        try:
            return cls(OKPKey.import_key(pem), "Ed25519")
        except Exception:
            return cls(ECKey.import_key(pem), "ES256")

    def to_pem(self) -> bytes:
        """PKCS#8 PEM of the private key: store it with the care of a password (mode 0600)."""
        return self._key.as_pem(private=True)

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
    ) -> str:
        """A proof for one request: ``htu`` is ``url`` without query and fragment (§4.2)."""
        htu = url.split("#", 1)[0].split("?", 1)[0]
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": htu,
            "iat": int(time.time()),
        }
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            claims["ath"] = _b64url(digest)
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.public_jwk}
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return jws.serialize_compact(header, payload, self._key, registry=_REGISTRY)

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self.alg!r}, thumbprint={self.thumbprint!r})"
