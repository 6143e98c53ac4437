"""The example files service (examples/files/) on its own, in process: internal tokens verified
with internal_auth for its own audience only, scopes pinned per route, single use on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from internal_auth import HEADER, Minter, PrivateKey, TokenScope, generate_private_key

from examples.files.app import ConfigError, FilesSettings, create_app

GATEWAY_ID = "tokengate-gateway"


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_private_key()


@pytest.fixture
def minter(key: PrivateKey) -> Minter:
    return Minter(key, issuer=GATEWAY_ID, audience="tokengate-files")


@pytest.fixture
async def files(key: PrivateKey) -> AsyncIterator[httpx.AsyncClient]:
    settings = FilesSettings.from_env({"INTERNAL_JWT_PUBLIC_KEY": key.public_pem()})
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://files") as client:
        yield client


def _token(
    minter: Minter,
    method: str,
    path: str,
    *,
    scope: TokenScope = TokenScope.USER_REQUEST,
    roles: tuple[str, ...] = ("user",),
    audience: str | None = None,
) -> dict[str, str]:
    anonymous = scope is TokenScope.ANONYMOUS
    sub, roles = (GATEWAY_ID, ()) if anonymous else ("u1", roles)
    token = minter.mint(
        sub=sub, scope=scope, htm=method, htu=path, roles=roles, audience=audience, pol="r"
    )
    return {HEADER: token}


async def test_public_read_accepts_the_anonymous_scope_and_nothing_else_does(
    files: httpx.AsyncClient, minter: Minter
) -> None:
    path = "/v1/files/public/readme"
    anon = await files.get(path, headers=_token(minter, "GET", path, scope=TokenScope.ANONYMOUS))
    assert anon.status_code == 200
    assert anon.json()["caller"] == {
        "sub": GATEWAY_ID,
        "scope": "anonymous_request",
        "roles": [],
        "pol": "r",
    }
    docs = "/v1/files/docs/readme"
    refused = await files.get(docs, headers=_token(minter, "GET", docs, scope=TokenScope.ANONYMOUS))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    read = await files.get(docs, headers=_token(minter, "GET", docs))
    assert read.status_code == 200 and read.json()["content"] == "the public readme"


async def test_admin_write_is_checked_by_the_service_too(
    files: httpx.AsyncClient, minter: Minter
) -> None:
    path = "/v1/files/docs/new"
    plain = await files.put(path, content=b"text", headers=_token(minter, "PUT", path))
    assert plain.status_code == 403
    admin = _token(minter, "PUT", path, roles=("user", "admin"))
    assert (await files.put(path, content=b"text", headers=admin)).status_code == 200
    # single use: the same token again is refused
    assert (await files.put(path, content=b"again", headers=admin)).status_code == 401
    too_big = await files.put(
        path, content=b"x" * (64 * 1024 + 1), headers=_token(minter, "PUT", path, roles=("admin",))
    )
    assert too_big.status_code == 413
    read = await files.get(path, headers=_token(minter, "GET", path))
    assert read.json()["content"] == "text"


async def test_a_token_for_the_backend_s_audience_is_refused(
    files: httpx.AsyncClient, minter: Minter
) -> None:
    path = "/v1/files/docs/readme"
    for_backend = _token(minter, "GET", path, audience="tokengate-backend")
    assert (await files.get(path, headers=for_backend)).status_code == 401
    assert (await files.get(path)).status_code == 401
    # bound to another path
    assert (
        await files.get(path, headers=_token(minter, "GET", "/v1/files/docs/x"))
    ).status_code == 401
    assert (await files.get("/healthz")).status_code == 200


def test_settings_need_exactly_one_public_key_source() -> None:
    with pytest.raises(ConfigError, match="INTERNAL_JWT_PUBLIC_KEY"):
        FilesSettings.from_env({})
    with pytest.raises(ConfigError, match="not a valid"):
        FilesSettings.from_env({"INTERNAL_JWT_PUBLIC_KEY": "nonsense"})
    key = generate_private_key()
    settings = FilesSettings.from_env(
        {"INTERNAL_JWT_PUBLIC_KEY": key.public_pem(), "FILES_ID": "x"}
    )
    assert settings.audience == "x"


def test_uvicorn_can_load_the_app_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import examples.files.app as module

    monkeypatch.setenv("INTERNAL_JWT_PUBLIC_KEY", generate_private_key().public_pem())
    assert module.app.title == "files (example service)"
    with pytest.raises(AttributeError):
        module.nothing  # noqa: B018


async def test_nested_document_names(files: httpx.AsyncClient, minter: Minter) -> None:
    path = "/v1/files/docs/team/plan"
    put = await files.put(path, content=b"p", headers=_token(minter, "PUT", path, roles=("admin",)))
    assert put.status_code == 200
    assert (await files.get(path, headers=_token(minter, "GET", path))).json()["content"] == "p"


async def test_a_key_the_gateway_publishes_is_learnt_from_the_signed_set(key: PrivateKey) -> None:
    """INTERNAL_JWKS_URL: a key promoted after the service started verifies without a restart,
    and a set nobody it trusts signed teaches it nothing."""
    import json

    from internal_auth import signed_key_set

    from tests.support.document_server import document_server

    promoted, stranger = generate_private_key(), generate_private_key()
    with document_server() as server:
        server.documents["/.well-known/jwks.jws"] = json.dumps(
            signed_key_set([key, promoted])
        ).encode()
        settings = FilesSettings.from_env(
            {
                "INTERNAL_JWT_PUBLIC_KEY": key.public_pem(),
                "INTERNAL_JWKS_URL": server.url + "/.well-known/jwks.json",
            }
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://files") as client:
                for signer, status in ((promoted, 200), (stranger, 401)):
                    minter = Minter(signer, issuer=GATEWAY_ID, audience="tokengate-files")
                    path = "/v1/files/docs/readme"
                    answer = await client.get(path, headers=_token(minter, "GET", path))
                    assert answer.status_code == status, answer.text
    with pytest.raises(ConfigError, match="INTERNAL_JWKS_URL"):
        FilesSettings.from_env(
            {"INTERNAL_JWT_PUBLIC_KEY": key.public_pem(), "INTERNAL_JWKS_URL": "http://gw/keys"}
        )
