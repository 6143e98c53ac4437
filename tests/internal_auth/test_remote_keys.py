"""The published key set (internal_auth.jwks) and a service fetching it (internal_auth.remote):
poisoned sets, kid floods and an endpoint that is down, over a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator

import httpx
import pytest
from internal_auth import (
    InternalAuthMiddleware,
    KeyLoadError,
    KeySet,
    Minter,
    PrivateKey,
    RemoteKeySet,
    TokenScope,
    Verifier,
    generate_private_key,
    key_set_document,
    signed_key_set,
    verify_signed_key_set,
)
from internal_auth.remote import token_kid
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.document_server import DocumentServer, document_server
from tests.support.internal_auth_tokens import AUDIENCE, ISSUER

JSON_PATH = "/.well-known/jwks.json"
JWS_PATH = "/.well-known/jwks.jws"


@pytest.fixture
def server() -> Iterator[DocumentServer]:
    with document_server() as running:
        yield running


def publish(server: DocumentServer, keys: list[PrivateKey]) -> None:
    server.documents[JWS_PATH] = json.dumps(signed_key_set(keys)).encode()
    server.documents[JSON_PATH] = key_set_document(KeySet(k.public_key for k in keys))


# -- the signed set -------------------------------------------------------------------------


def test_a_set_signed_by_every_key_is_accepted_by_a_holder_of_any_one() -> None:
    old, new = generate_private_key(), generate_private_key()
    document = json.dumps(signed_key_set([old, new]))
    for trusted in (old, new):
        got = verify_signed_key_set(document, KeySet([trusted.public_key]))
        assert set(got.kids) == {old.kid, new.kid}


def test_a_set_signed_by_an_unknown_key_is_refused() -> None:
    pinned, attacker = generate_private_key(), generate_private_key()
    document = json.dumps(signed_key_set([attacker]))
    with pytest.raises(KeyLoadError, match="not signed by any trusted key"):
        verify_signed_key_set(document, KeySet([pinned.public_key]))


def test_a_tampered_payload_or_header_is_refused() -> None:
    pinned, attacker = generate_private_key(), generate_private_key()
    document = signed_key_set([pinned])
    # the attacker's set under the pinned key's signature
    document["payload"] = signed_key_set([attacker])["payload"]
    with pytest.raises(KeyLoadError, match="does not verify"):
        verify_signed_key_set(json.dumps(document), KeySet([pinned.public_key]))
    forged = signed_key_set([pinned])
    forged["signatures"][0]["protected"] = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
    with pytest.raises(KeyLoadError, match="not EdDSA"):
        verify_signed_key_set(json.dumps(forged), KeySet([pinned.public_key]))


@pytest.mark.parametrize(
    "document",
    [b"[]", b"{}", b'{"payload": 1, "signatures": []}', b"x" * 70_000, b"not json"],
)
def test_malformed_signed_sets_are_refused(document: bytes) -> None:
    with pytest.raises(KeyLoadError):
        verify_signed_key_set(document, KeySet([generate_private_key().public_key]))


# -- fetching -------------------------------------------------------------------------------


async def test_a_fetched_set_adds_keys_and_a_poisoned_one_is_ignored(
    server: DocumentServer,
) -> None:
    pinned, new, attacker = (generate_private_key() for _ in range(3))
    outcomes: list[str] = []
    remote = RemoteKeySet(
        KeySet([pinned.public_key]), server.url + JSON_PATH, on_fetch=outcomes.append
    )
    try:
        publish(server, [pinned, new])
        assert await remote.refresh() == "ok"
        assert set(remote.kids) == {pinned.kid, new.kid}
        # a set signed only by a key nobody trusts: ignored, counted, last good set kept
        publish(server, [attacker])
        assert await remote.refresh() == "refused"
        assert attacker.kid not in remote and new.kid in remote
        # the plain JSON beside it is never trusted over plain HTTP
        assert server.fetches(JSON_PATH) == 0
    finally:
        await remote.close()
    assert outcomes == ["ok", "refused"]


async def test_a_key_learnt_from_a_trusted_set_extends_the_chain(server: DocumentServer) -> None:
    pinned, second, third = (generate_private_key() for _ in range(3))
    remote = RemoteKeySet(KeySet([pinned.public_key]), server.url + JSON_PATH)
    try:
        publish(server, [pinned, second])
        await remote.refresh()
        # the pinned key retired: the set is now signed only by keys learnt from the chain
        publish(server, [second, third])
        assert await remote.refresh() == "ok"
        assert {second.kid, third.kid, pinned.kid} <= set(remote.kids)
    finally:
        await remote.close()


async def test_a_flood_of_unknown_kids_costs_at_most_one_fetch_per_cooldown(
    server: DocumentServer,
) -> None:
    pinned = generate_private_key()
    publish(server, [pinned])
    remote = RemoteKeySet(KeySet([pinned.public_key]), server.url + JSON_PATH, cooldown=60.0)
    try:
        results = await asyncio.gather(
            *(remote.learn(secrets.token_urlsafe(32)) for _ in range(300))
        )
        assert not any(results)
        # the same random kids again, and new ones: still nothing fetched within the cooldown
        await asyncio.gather(*(remote.learn(secrets.token_urlsafe(32)) for _ in range(100)))
        assert server.fetches(JWS_PATH) == 1
    finally:
        await remote.close()


async def test_an_unknown_kid_is_learnt_by_one_fetch_shared_by_every_waiter(
    server: DocumentServer,
) -> None:
    pinned, staged = generate_private_key(), generate_private_key()
    remote = RemoteKeySet(KeySet([pinned.public_key]), server.url + JSON_PATH, cooldown=0.0)
    try:
        publish(server, [pinned])
        await remote.refresh()
        publish(server, [pinned, staged])
        results = await asyncio.gather(*(remote.learn(staged.kid) for _ in range(50)))
        assert all(results)
        assert server.fetches(JWS_PATH) == 2
    finally:
        await remote.close()


async def test_the_endpoint_down_rejects_nothing_that_was_known(server: DocumentServer) -> None:
    pinned, fetched = generate_private_key(), generate_private_key()
    publish(server, [pinned, fetched])
    remote = RemoteKeySet(
        KeySet([pinned.public_key]), server.url + JSON_PATH, refresh_interval=0.05, cooldown=0.0
    )
    verifier = Verifier(remote, issuer=ISSUER, audience=AUDIENCE, replay_cache=None)
    minter = Minter(fetched, issuer=ISSUER, audience=AUDIENCE)
    await remote.start()
    try:
        server.down = True
        before = server.fetches(JWS_PATH)
        for _ in range(10):  # many failed scheduled refreshes (and unknown-kid ones)
            await asyncio.sleep(0.05)
            await remote.learn(secrets.token_urlsafe(32))
            token = minter.mint(sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
            verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
        assert server.fetches(JWS_PATH) > before + 3
        assert fetched.kid in remote
    finally:
        await remote.close()


def test_https_needs_a_ca_and_plain_http_needs_the_json_name() -> None:
    pinned = KeySet([generate_private_key().public_key])
    with pytest.raises(ValueError, match="CA"):
        RemoteKeySet(pinned, "https://gateway.internal/.well-known/jwks.json")
    with pytest.raises(ValueError, match=r"jwks\.json"):
        RemoteKeySet(pinned, "http://gateway.internal/keys")


def test_token_kid_reads_only_a_bounded_header() -> None:
    key = generate_private_key()
    token = Minter(key, issuer=ISSUER, audience=AUDIENCE).mint(
        sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me"
    )
    assert token_kid(token) == key.kid
    assert token_kid("x" * 5000 + ".a.b") is None
    assert token_kid("bm90IGpzb24.a.b") is None


# -- the guard learns a staged key on the request that first uses it ------------------------


async def test_the_middleware_learns_a_new_kid_and_verifies_the_same_request(
    server: DocumentServer,
) -> None:
    pinned, promoted = generate_private_key(), generate_private_key()
    publish(server, [pinned])
    remote = RemoteKeySet(KeySet([pinned.public_key]), server.url + JSON_PATH, cooldown=0.0)
    verifier = Verifier(remote, issuer=ISSUER, audience=AUDIENCE)

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.principal.sub})

    app = InternalAuthMiddleware(
        Starlette(routes=[Route("/v1/me", me)]),
        verifier=verifier,
        rules=[("/v1/", TokenScope.USER_REQUEST)],
    )
    await remote.refresh()
    publish(server, [pinned, promoted])  # the gateway promoted a key the service never saw
    token = Minter(promoted, issuer=ISSUER, audience=AUDIENCE).mint(
        sub="alice", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me"
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            answer = await client.get("/v1/me", headers={"X-Internal-Auth": token})
            assert answer.status_code == 200 and answer.json() == {"sub": "alice"}
            # a key nobody publishes is still refused, after at most one more fetch
            stranger = Minter(generate_private_key(), issuer=ISSUER, audience=AUDIENCE).mint(
                sub="mallory", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me"
            )
            refused = await client.get("/v1/me", headers={"X-Internal-Auth": stranger})
            assert refused.status_code == 401
    finally:
        await remote.close()
