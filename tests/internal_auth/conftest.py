"""Keys, a minter and a verifier on a fixed clock for the internal_auth tests."""

from __future__ import annotations

import pytest
from internal_auth import (
    KeySet,
    Minter,
    PrivateKey,
    Verifier,
    generate_private_key,
)

from tests.support.internal_auth_tokens import AUDIENCE, ISSUER, clock


@pytest.fixture(scope="session")
def key() -> PrivateKey:
    return generate_private_key()


@pytest.fixture(scope="session")
def other_key() -> PrivateKey:
    return generate_private_key()


@pytest.fixture
def minter(key: PrivateKey) -> Minter:
    return Minter(key, issuer=ISSUER, audience=AUDIENCE, ttl=30, clock=clock)


@pytest.fixture
def verifier(key: PrivateKey) -> Verifier:
    return Verifier(KeySet([key.public_key]), issuer=ISSUER, audience=AUDIENCE, clock=clock)
