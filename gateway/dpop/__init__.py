"""DPoP (RFC 9449) for API clients: proofs checked per request, a shared ``jti`` replay cache and
server nonces. The checks and their order are documented in :mod:`._proof`; what the rest of the
gateway may use is re-exported here.
"""

from gateway.dpop._proof import (
    ALGORITHMS,
    ALGS_PARAM,
    DPoP,
    DPoPUnauthorized,
    InvalidDPoPProof,
    NonceRequired,
    Nonces,
    Proof,
    ProofError,
    ProofVerifier,
    ReplayCache,
    UseDPoPNonce,
    access_token_hash,
    challenge,
    jwk_thumbprint,
    normalise_htu,
)

__all__ = [
    "ALGORITHMS",
    "ALGS_PARAM",
    "DPoP",
    "DPoPUnauthorized",
    "InvalidDPoPProof",
    "NonceRequired",
    "Nonces",
    "Proof",
    "ProofError",
    "ProofVerifier",
    "ReplayCache",
    "UseDPoPNonce",
    "access_token_hash",
    "challenge",
    "jwk_thumbprint",
    "normalise_htu",
]
