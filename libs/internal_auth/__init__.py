"""internal_auth: EdDSA-signed internal tokens between a gateway and the services behind it.

The gateway holds an Ed25519 private key and mints one short-lived token per proxied request
(:class:`Minter`); each service holds only public keys and verifies it (:class:`Verifier`,
:class:`InternalAuthMiddleware`). Tokens are JWS compact serialisations with ``alg: EdDSA``
(RFC 8037), ``typ: internal+jwt`` (RFC 8725 §3.11) and ``kid`` = RFC 7638 thumbprint; they bind
the request method and path (``htm``/``htu``) and carry one :class:`Scope`.

Quick start::

    key = generate_private_key()
    minter = Minter(key, issuer="tokengate-gateway", audience="tokengate-backend")
    token = minter.mint(sub=user_id, scope=Scope.USER_REQUEST, htm="GET", htu="/v1/me")

    verifier = Verifier(KeySet([key.public_key]), issuer="tokengate-gateway",
                        audience="tokengate-backend")
    principal = verifier.verify(token, scope=Scope.USER_REQUEST, htm="GET", htu="/v1/me")
"""

from .errors import InternalAuthError, KeyLoadError, Reason
from .keys import (
    KeySet,
    PrivateKey,
    PublicKey,
    generate_private_key,
    load_private_key,
    load_private_key_file,
    load_public_keys,
    load_public_keys_file,
)
from .middleware import InternalAuthMiddleware, RejectHook, get_principal
from .scopes import Scope
from .tokens import HEADER, MAX_TTL, Minter, Principal, Verifier

__all__ = [
    "HEADER",
    "MAX_TTL",
    "InternalAuthError",
    "InternalAuthMiddleware",
    "KeyLoadError",
    "KeySet",
    "Minter",
    "Principal",
    "PrivateKey",
    "PublicKey",
    "Reason",
    "RejectHook",
    "Scope",
    "Verifier",
    "generate_private_key",
    "get_principal",
    "load_private_key",
    "load_private_key_file",
    "load_public_keys",
    "load_public_keys_file",
]
