"""What many services behind one gateway need from internal_auth (issue 20): one minter naming a
different audience per token, the ``pol`` claim, routes that accept a set of scopes (the
anonymous one only where a service opts in), and rule prefixes matched on segment boundaries."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from internal_auth import (
    HEADER,
    InternalAuthError,
    InternalAuthMiddleware,
    KeySet,
    Minter,
    Principal,
    PrivateKey,
    Reason,
    TokenScope,
    Verifier,
    get_principal,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.internal_auth_tokens import AUDIENCE, ISSUER, clock

FILES = "tokengate-files"


def test_the_audience_is_chosen_per_token_and_each_service_refuses_the_others(
    key: PrivateKey, minter: Minter
) -> None:
    files = Verifier(KeySet([key.public_key]), issuer=ISSUER, audience=FILES, clock=clock)
    backend = Verifier(KeySet([key.public_key]), issuer=ISSUER, audience=AUDIENCE, clock=clock)
    for_files = minter.mint(
        sub="u1", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/files/a", audience=FILES
    )
    with pytest.raises(InternalAuthError) as refused:
        backend.verify(for_files, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/files/a")
    assert refused.value.reason is Reason.WRONG_AUDIENCE
    assert files.verify(
        for_files, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/files/a"
    ).sub == ("u1")
    # without the argument the minter's own audience, as before
    for_backend = minter.mint(sub="u1", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
    with pytest.raises(InternalAuthError) as refused:
        files.verify(for_backend, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
    assert refused.value.reason is Reason.WRONG_AUDIENCE
    with pytest.raises(ValueError, match="audience"):
        minter.mint(sub="u1", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me", audience="")


def test_pol_names_the_rule_and_is_optional(minter: Minter, verifier: Verifier) -> None:
    token = minter.mint(sub="u1", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me", pol="me")
    assert verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me").pol == (
        "me"
    )
    plain = minter.mint(sub="u1", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
    assert (
        verifier.verify(plain, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me").pol is None
    )
    # source-compatible: a Principal is still built without it
    assert Principal("s", TokenScope.USER_REQUEST, (), None, "j", "i", 1, 2).pol is None


def test_a_set_of_scopes_accepts_any_of_them_and_reports_the_one_granted(
    minter: Minter, verifier: Verifier
) -> None:
    anonymous = minter.mint(sub=ISSUER, scope=TokenScope.ANONYMOUS, htm="GET", htu="/v1/pub")
    public = {TokenScope.USER_REQUEST, TokenScope.ANONYMOUS}
    principal = verifier.verify(anonymous, scope=public, htm="GET", htu="/v1/pub")
    assert principal.scope is TokenScope.ANONYMOUS and principal.roles == ()
    again = minter.mint(sub=ISSUER, scope=TokenScope.ANONYMOUS, htm="GET", htu="/v1/pub")
    with pytest.raises(InternalAuthError) as refused:
        verifier.verify(again, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/pub")
    assert refused.value.reason is Reason.WRONG_SCOPE


async def _who(request: Request) -> JSONResponse:
    principal = get_principal(request)
    return JSONResponse({"sub": principal.sub, "scope": principal.scope.value})


def _app(verifier: Verifier, rejected: list[tuple[Reason, str]]) -> Starlette:
    def on_reject(reason: Reason, scope: Any, iss: str | None) -> None:
        rejected.append((reason, scope["path"]))

    return Starlette(
        routes=[Route("/v1/{path:path}", _who, methods=["GET"])],
        middleware=[
            Middleware(
                InternalAuthMiddleware,
                verifier=verifier,
                rules=[
                    ("/v1/pub", {TokenScope.USER_REQUEST, TokenScope.ANONYMOUS}),
                    ("/v1/docs", [TokenScope.USER_REQUEST]),
                    ("/v1/old/", TokenScope.USER_REQUEST),
                ],
                on_reject=on_reject,
            )
        ],
    )


async def test_the_anonymous_scope_passes_only_where_the_service_opted_in(
    minter: Minter, verifier: Verifier
) -> None:
    rejected: list[tuple[Reason, str]] = []
    transport = httpx.ASGITransport(app=_app(verifier, rejected))
    async with httpx.AsyncClient(transport=transport, base_url="http://files") as client:

        def anon(path: str) -> dict[str, str]:
            return {
                HEADER: minter.mint(sub=ISSUER, scope=TokenScope.ANONYMOUS, htm="GET", htu=path)
            }

        def user(path: str) -> dict[str, str]:
            return {
                HEADER: minter.mint(sub="u1", scope=TokenScope.USER_REQUEST, htm="GET", htu=path)
            }

        assert (await client.get("/v1/pub/a", headers=anon("/v1/pub/a"))).json() == {
            "sub": ISSUER,
            "scope": "anonymous_request",
        }
        assert (await client.get("/v1/pub", headers=user("/v1/pub"))).status_code == 200
        assert (await client.get("/v1/docs/a", headers=anon("/v1/docs/a"))).status_code == 403
        assert (await client.get("/v1/docs/a", headers=user("/v1/docs/a"))).status_code == 200
        # segment boundaries: "/v1/pub" is not a prefix of "/v1/public-leak" (no rule: 401)
        leak = await client.get("/v1/public-leak", headers=anon("/v1/public-leak"))
        assert leak.status_code == 401
        assert (Reason.NO_RULE, "/v1/public-leak") in rejected
        assert (await client.get("/v1/docsx", headers=user("/v1/docsx"))).status_code == 401
        # the old form, a prefix ending in "/", still matches what is below it
        assert (await client.get("/v1/old/x", headers=user("/v1/old/x"))).status_code == 200


def test_a_rule_needs_a_scope(verifier: Verifier) -> None:
    with pytest.raises(ValueError, match="at least one scope"):
        InternalAuthMiddleware(_who, verifier=verifier, rules=[("/v1", [])])  # type: ignore[arg-type]
