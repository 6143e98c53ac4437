"""internal_auth: EdDSA-signed internal tokens between a gateway and the services behind it.

The gateway holds an Ed25519 private key and mints one short-lived token per proxied request
(:class:`Minter`); each service holds only public keys and verifies it (:class:`Verifier`,
:class:`InternalAuthMiddleware`). Tokens are JWS compact serialisations with ``alg: EdDSA``
(RFC 8037), ``typ: internal+jwt`` (RFC 8725 §3.11) and ``kid`` = RFC 7638 thumbprint; they bind
the request method and path (``htm``/``htu``) and carry one :class:`TokenScope`.

Quick start::

    key = generate_private_key()
    minter = Minter(key, issuer="tokengate-gateway", audience="tokengate-backend")
    token = minter.mint(sub=user_id, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")

    verifier = Verifier(KeySet([key.public_key]), issuer="tokengate-gateway",
                        audience="tokengate-backend")
    principal = verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")

``Scope``, the old name of :class:`TokenScope`, still imports for one release with a
:class:`DeprecationWarning`.
"""

import warnings
from typing import Any

from .errors import InternalAuthError, KeyLoadError, Reason
from .jwks import JWKS_CONTENT_TYPE, key_set_document, signed_key_set, verify_signed_key_set
from .keyfile import KeyHolder, SigningKey, SigningKeys, write_key_file
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
from .middleware import PROBE_PATH, REFUSED_CODE, InternalAuthMiddleware, RejectHook, get_principal
from .remote import RemoteKeySet
from .replay import ReplayCache
from .scopes import TokenScope
from .tokens import HEADER, MAX_TTL, Minter, Principal, Verifier

__all__ = [
    "HEADER",
    "JWKS_CONTENT_TYPE",
    "MAX_TTL",
    "PROBE_PATH",
    "REFUSED_CODE",
    "InternalAuthError",
    "InternalAuthMiddleware",
    "KeyHolder",
    "KeyLoadError",
    "KeySet",
    "Minter",
    "Principal",
    "PrivateKey",
    "PublicKey",
    "Reason",
    "RejectHook",
    "RemoteKeySet",
    "ReplayCache",
    "SigningKey",
    "SigningKeys",
    "TokenScope",
    "Verifier",
    "generate_private_key",
    "get_principal",
    "key_set_document",
    "load_private_key",
    "load_private_key_file",
    "load_public_keys",
    "load_public_keys_file",
    "signed_key_set",
    "verify_signed_key_set",
    "write_key_file",
]


def __getattr__(name: str) -> Any:
    # PEP 562: only the removed name goes through here; every other attribute is found directly.
    if name == "Scope":
        warnings.warn(
            "internal_auth.Scope is deprecated, use internal_auth.TokenScope "
            "(Scope means the ASGI scope in an ASGI codebase); it goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return TokenScope
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
