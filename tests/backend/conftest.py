"""Backend fixtures: the real app over the session's migrated PostgreSQL database, driven in process
by Starlette's TestClient, with tokens minted by ``internal_auth`` exactly as the gateway does."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
import pytest
from internal_auth import HEADER, KeySet, Minter, TokenScope, generate_private_key
from starlette.testclient import TestClient

from backend.app import create_app
from backend.passwords import Argon2Params, Passwords
from backend.settings import Settings

GATEWAY_ID = "tokengate-gateway"
BACKEND_ID = "tokengate-backend"
# Cheap parameters keep the suite fast; production defaults are tested in test_passwords.py.
FAST_ARGON2 = Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)


@dataclass
class Backend:
    client: TestClient
    minter: Minter
    settings: Settings

    def token(
        self,
        sub: str,
        *,
        method: str,
        path: str,
        scope: TokenScope = TokenScope.USER_REQUEST,
        roles: Sequence[str] = ("user",),
    ) -> dict[str, str]:
        token = self.minter.mint(sub=sub, scope=scope, htm=method, htu=path, roles=roles)
        return {HEADER: token}

    def call(
        self,
        method: str,
        path: str,
        *,
        user: str,
        roles: Sequence[str] = ("user",),
        headers: dict[str, str] | None = None,
        json: object = None,
    ) -> httpx.Response:
        sent = {
            **self.token(user, method=method, path=path.split("?")[0], roles=roles),
            **(headers or {}),
        }
        return self.client.request(method, path, headers=sent, json=json)

    def create_user(
        self,
        email: str | None = None,
        password: str = "correct horse battery",
        roles: tuple[str, ...] = ("user",),
    ) -> str:
        email = email or f"user-{secrets.token_hex(4)}@example.test"
        passwords: Passwords = self.client.app.state.passwords  # type: ignore[attr-defined]
        users = self.client.app.state.users  # type: ignore[attr-defined]
        password_hash = passwords.hash_sync(password)
        assert self.client.portal is not None
        user = self.client.portal.call(users.create, email, password_hash, roles)
        return str(user.id)

    def validate(self, email: str, password: str) -> httpx.Response:
        path = "/internal/auth/validate"
        headers = self.token(GATEWAY_ID, method="POST", path=path, scope=TokenScope.AUTH_VALIDATE)
        return self.client.post(path, json={"email": email, "password": password}, headers=headers)


def make_settings(dsn: str, keys: KeySet) -> Settings:
    return Settings(
        database_url=dsn,
        public_keys=keys,
        gateway_id=GATEWAY_ID,
        backend_id=BACKEND_ID,
        argon2=FAST_ARGON2,
    )


@pytest.fixture
def backend(migrated_dsn: str) -> Iterator[Backend]:
    key = generate_private_key()
    settings = make_settings(migrated_dsn, KeySet([key.public_key]))
    app = create_app(settings, passwords=Passwords(FAST_ARGON2))
    minter = Minter(key, issuer=GATEWAY_ID, audience=BACKEND_ID)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Backend(client=client, minter=minter, settings=settings)


def random_id() -> str:
    return str(uuid.uuid4())
