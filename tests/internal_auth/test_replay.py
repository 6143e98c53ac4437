"""Single use: every internal token is accepted once per verifier, and the cache that remembers
them is bounded and fails closed (issue 10, finding 5)."""

from __future__ import annotations

import json

import pytest
from internal_auth import (
    InternalAuthError,
    InternalAuthMiddleware,
    KeySet,
    Minter,
    PrivateKey,
    Reason,
    ReplayCache,
    TokenScope,
    Verifier,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.support.internal_auth_tokens import AUDIENCE, ISSUER, NOW

USER = TokenScope.USER_REQUEST


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def _pair(key: PrivateKey, cache: ReplayCache | None) -> tuple[Minter, Verifier, Clock]:
    clock = Clock()
    minter = Minter(key, issuer=ISSUER, audience=AUDIENCE, ttl=30, clock=clock)
    verifier = Verifier(
        KeySet([key.public_key]),
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway=5,
        clock=clock,
        replay_cache=cache,
    )
    return minter, verifier, clock


def _mint(minter: Minter, scope: TokenScope = USER) -> str:
    return minter.mint(sub="u1", scope=scope, htm="GET", htu="/v1/me")


def _verify(verifier: Verifier, token: str, scope: TokenScope = USER) -> object:
    return verifier.verify(token, scope=scope, htm="GET", htu="/v1/me")


def test_single_use_is_on_by_default(key: PrivateKey) -> None:
    verifier = Verifier(KeySet([key.public_key]), issuer=ISSUER, audience=AUDIENCE)
    assert isinstance(verifier.replay_cache, ReplayCache)
    minter = Minter(key, issuer=ISSUER, audience=AUDIENCE)
    token = _mint(minter)
    _verify(verifier, token)
    with pytest.raises(InternalAuthError) as caught:
        _verify(verifier, token)
    assert caught.value.reason is Reason.REPLAYED


def test_a_captured_token_is_refused_every_time_after_the_first(key: PrivateKey) -> None:
    minter, verifier, _ = _pair(key, ReplayCache(10, clock=Clock()))
    token = _mint(minter)
    _verify(verifier, token)
    for _ in range(20):
        with pytest.raises(InternalAuthError) as caught:
            _verify(verifier, token)
        assert caught.value.reason is Reason.REPLAYED


def test_a_refused_token_is_not_remembered(key: PrivateKey) -> None:
    """Only tokens that pass every check are recorded: a wrong-scope attempt uses nothing."""
    minter, verifier, _ = _pair(key, ReplayCache(10))
    token = _mint(minter)
    with pytest.raises(InternalAuthError) as caught:
        _verify(verifier, token, TokenScope.AUTH_VALIDATE)
    assert caught.value.reason is Reason.WRONG_SCOPE
    assert verifier.replay_cache is not None and len(verifier.replay_cache) == 0
    _verify(verifier, token)


def test_a_full_cache_refuses_new_tokens_and_keeps_every_live_entry(key: PrivateKey) -> None:
    minter, verifier, clock = _pair(key, None)
    verifier.replay_cache = ReplayCache(3, clock=clock)
    used = [_mint(minter) for _ in range(3)]
    for token in used:
        _verify(verifier, token)
    with pytest.raises(InternalAuthError) as caught:
        _verify(verifier, _mint(minter))
    assert caught.value.reason is Reason.REPLAY_CACHE_FULL
    for token in used:  # nothing was evicted to make room
        with pytest.raises(InternalAuthError) as caught:
            _verify(verifier, token)
        assert caught.value.reason is Reason.REPLAYED


def test_entries_leave_once_their_token_could_no_longer_verify(key: PrivateKey) -> None:
    minter, verifier, clock = _pair(key, None)
    cache = ReplayCache(2, clock=clock)
    verifier.replay_cache = cache
    first = _mint(minter)
    _verify(verifier, first)
    _verify(verifier, _mint(minter))
    clock.now += 30 + 5 - 1  # still inside exp + leeway: kept, and the cache is full
    with pytest.raises(InternalAuthError) as caught:
        _verify(verifier, _mint(minter))
    assert caught.value.reason is Reason.REPLAY_CACHE_FULL
    clock.now += 1  # exp + leeway reached: the token is dead, its entry goes
    _verify(verifier, _mint(minter))
    assert len(cache) == 1
    with pytest.raises(InternalAuthError) as caught:
        _verify(verifier, first)
    assert caught.value.reason is Reason.EXPIRED


def test_single_use_can_be_turned_off_explicitly(key: PrivateKey) -> None:
    minter, verifier, _ = _pair(key, None)
    token = _mint(minter)
    _verify(verifier, token)
    _verify(verifier, token)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_cache_size_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError):
        ReplayCache(bad)  # type: ignore[arg-type]


def _app(verifier: Verifier) -> Starlette:
    async def me(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[Route("/v1/me", me)],
        middleware=[Middleware(InternalAuthMiddleware, verifier=verifier, rules=[("/v1/", USER)])],
    )


def test_middleware_answers_401_to_a_replay_and_503_when_full(key: PrivateKey) -> None:
    minter = Minter(key, issuer=ISSUER, audience=AUDIENCE)
    verifier = Verifier(
        KeySet([key.public_key]), issuer=ISSUER, audience=AUDIENCE, replay_cache=ReplayCache(1)
    )
    with TestClient(_app(verifier)) as client:
        token = _mint(minter)
        assert client.get("/v1/me", headers={"X-Internal-Auth": token}).status_code == 200
        replay = client.get("/v1/me", headers={"X-Internal-Auth": token})
        assert replay.status_code == 401
        assert json.loads(replay.content)["error"]["code"] == "internal_token_refused"
        full = client.get("/v1/me", headers={"X-Internal-Auth": _mint(minter)})
        assert full.status_code == 503
        assert full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "service_unavailable"
