"""Cookie tossing (issue 10, finding 8): a sibling subdomain can plant a refresh cookie with
``Domain=``; the browser then sends it next to (or instead of) the real one. With ``Secure`` the
cookie is ``__Host-tg_refresh``, which no other host can set, and a request carrying the refresh
cookie twice is refused in either mode."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import FakeBackend, Harness, login, refresh_cookie

REFRESH = "/api/v1/auth/refresh"


async def test_an_unprefixed_cookie_is_not_read_when_secure(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    """What a sibling subdomain can set (``tg_refresh``, any Domain) is never a refresh cookie."""
    async with gateway(env) as client:
        token = refresh_cookie(await login(client, backend.add_user()))
        client.cookies.clear()
        planted = await client.post(REFRESH, headers={"Cookie": f"tg_refresh={token}"})
        assert planted.status_code == 401
        real = await client.post(REFRESH, headers={"Cookie": f"__Host-tg_refresh={token}"})
        assert real.status_code == 200


@pytest.mark.parametrize(
    ("overrides", "base_url", "name"),
    [
        ({}, "https://gateway.test", "__Host-tg_refresh"),
        ({"COOKIE_SECURE": "false"}, "http://localhost:8000", "tg_refresh"),
    ],
)
async def test_two_refresh_cookies_are_refused_and_cleared(
    gateway: Harness,
    env: dict[str, str],
    backend: FakeBackend,
    overrides: dict[str, str],
    base_url: str,
    name: str,
) -> None:
    async with gateway(env, **overrides) as client:
        client.base_url = base_url
        victim = refresh_cookie(await login(client, backend.add_user()), name=name)
        attacker = refresh_cookie(await login(client, backend.add_user()), name=name)
        client.cookies.clear()
        for pair in ((victim, attacker), (attacker, victim)):
            cookie = f"{name}={pair[0]}; {name}={pair[1]}"
            r = await client.post(REFRESH, headers={"Cookie": cookie})
            assert r.status_code == 401
            assert any(
                h.startswith(f"{name}=") and "max-age=0" in h.lower()
                for h in r.headers.get_list("set-cookie")
            )
        # neither token was rotated by the refused requests
        r = await client.post(REFRESH, headers={"Cookie": f"{name}={victim}"})
        assert r.status_code == 200


async def test_secure_responses_also_clear_the_legacy_cookie(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    """Browsers holding the pre-__Host- cookie get it deleted (they log in once more)."""
    async with gateway(env) as client:
        response = await login(client, backend.add_user())
    legacy = [h for h in response.headers.get_list("set-cookie") if h.startswith("tg_refresh=")]
    assert legacy and "Path=/api/v1/auth" in legacy[0]
