"""DPoP (RFC 9449) through the gateway app: proofs, bound tokens, body-mode refresh and logout.

Proofs are built with PyJWT and ``cryptography`` (``tests/support/dpop_proofs.py``), never with
joserfc, the gateway's own JOSE library. Real PostgreSQL and Redis; the multi-process checks (a
replay on a second gateway, 20 concurrent body-mode refreshes) are in
``tests/e2e/test_dpop_e2e.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.dpop import ALGORITHMS, Nonces, ProofError, ProofVerifier
from gateway.settings import Settings
from tests.gateway.conftest import (
    BASE_URL,
    ORIGIN,
    PASSWORD,
    FakeBackend,
    Harness,
    refresh_cookie,
)
from tests.support.dpop_proofs import ProofKey, ath, b64url
from tests.support.servers import PrivateRedis

LOGIN = f"{BASE_URL}/api/v1/auth/login"
REFRESH = f"{BASE_URL}/api/v1/auth/refresh"
LOGOUT = f"{BASE_URL}/api/v1/auth/logout"
SESSIONS = f"{BASE_URL}/api/v1/auth/sessions"


@pytest.fixture
def dpop_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PUBLIC_ORIGIN": BASE_URL}


@asynccontextmanager
async def api_client(gateway: Harness, environ: dict[str, str], **kw: str) -> AsyncIterator[Any]:
    """A gateway client that sends no ``Origin``: a non-browser client."""
    async with gateway(environ, **kw) as client:
        del client.headers["Origin"]
        yield client


async def dpop_login(
    client: httpx.AsyncClient, email: str, key: ProofKey, **headers: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"DPoP": key.proof("POST", LOGIN), **headers},
    )


async def body_refresh(client: httpx.AsyncClient, token: str, key: ProofKey) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": token},
        headers={"DPoP": key.proof("POST", REFRESH)},
    )


async def dpop_get(
    client: httpx.AsyncClient, token: str, key: ProofKey, url: str = SESSIONS, **claims: Any
) -> httpx.Response:
    proof = key.proof("GET", url, access_token=token, **claims)
    return await client.get(
        url.removeprefix(BASE_URL), headers={"Authorization": f"DPoP {token}", "DPoP": proof}
    )


# -- the proof checks, one by one (RFC 9449 §4.3) -------------------------------------------------


def _verifier(**kw: Any) -> ProofVerifier:
    return ProofVerifier(public_origins=[BASE_URL], iat_window=60, nonces=kw.pop("nonces", None))


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "Ed25519"])
def test_each_accepted_algorithm_verifies(alg: str) -> None:
    key = ProofKey(alg)
    proof = _verifier().verify(
        key.proof("GET", SESSIONS), method="GET", path="/api/v1/auth/sessions"
    )
    assert proof.jkt == key.thumbprint
    assert set(ALGORITHMS) == {"ES256", "EdDSA", "Ed25519"}


def test_browser_exported_jwk_members_are_ignored() -> None:
    """WebCrypto exports ``alg``, ``ext`` and ``key_ops``: they are not part of the thumbprint."""
    key = ProofKey("ES256")
    jwk = {**key.jwk, "alg": "ES256", "ext": True, "key_ops": ["verify"]}
    proof = key.proof("GET", SESSIONS, header={"jwk": jwk})
    assert _verifier().verify(proof, method="GET", path="/api/v1/auth/sessions").jkt == (
        key.thumbprint
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ({"header": {"alg": "none"}}, "alg"),
        ({"header": {"alg": "HS256"}}, "alg"),
        ({"header": {"alg": "ES384"}}, "alg"),
        ({"header": {"typ": "JWT"}}, "typ"),
        ({"header": {"typ": None}}, "typ"),
        ({"header": {"jwk": None}}, "jwk"),
        ({"header": {"jwk": {"kty": "EC", "crv": "P-256", "x": ["a"], "y": {}}}}, "jwk"),
        ({"header": {"jwk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}}}, "jwk"),
        ({"header": {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}}}, "jwk_type"),
        ({"header": {"jwk": {"kty": "OKP", "crv": "Ed448", "x": "AA"}}}, "jwk_type"),
        ({"private_jwk": True}, "jwk_private"),
        ({"claims": {"jti": None}}, "jti"),
        ({"claims": {"htm": "POST"}}, "htm"),
        ({"claims": {"htm": None}}, "htm"),
        ({"claims": {"htu": f"{BASE_URL}/api/v1/auth/logout"}}, "htu"),
        ({"claims": {"htu": "https://evil.test/api/v1/auth/sessions"}}, "htu"),
        ({"claims": {"htu": None}}, "htu"),
        ({"claims": {"iat": None}}, "iat"),
        ({"claims": {"iat": "now"}}, "iat"),
        ({"claims": {"iat_shift": -61}}, "iat_window"),
        ({"claims": {"iat_shift": 61}}, "iat_window"),
    ],
)
def test_each_check_refuses(case: dict[str, Any], reason: str) -> None:
    key = ProofKey("ES256")
    claims = dict(case.get("claims", {}))
    if "iat_shift" in claims:
        claims["iat"] = int(time.time()) + claims.pop("iat_shift")
    header = dict(case.get("header", {}))
    if case.get("private_jwk"):
        header["jwk"] = key.private_jwk
    proof = key.proof("GET", SESSIONS, header=header, **claims)
    with pytest.raises(ProofError) as caught:
        _verifier().verify(proof, method="GET", path="/api/v1/auth/sessions")
    assert caught.value.reason == reason


def test_ed25519_alg_with_an_ec_key_and_a_bad_signature_are_refused() -> None:
    ec_key, ed_key = ProofKey("ES256"), ProofKey("EdDSA")
    mixed = ed_key.proof("GET", SESSIONS, header={"jwk": ec_key.jwk})
    with pytest.raises(ProofError, match="jwk_type"):
        _verifier().verify(mixed, method="GET", path="/api/v1/auth/sessions")
    other = ProofKey("EdDSA")
    forged = ed_key.proof("GET", SESSIONS, header={"jwk": other.jwk})
    with pytest.raises(ProofError, match="signature"):
        _verifier().verify(forged, method="GET", path="/api/v1/auth/sessions")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_no_other_spelling_of_a_proof_signature_verifies(alg: str) -> None:
    """A 64-byte signature's last base64url character carries 4 unused bits: the 15 other
    characters that decode to the same bytes are refused, so a proof has one spelling only."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    key = ProofKey(alg)
    proof = key.proof("GET", SESSIONS)
    _verifier().verify(proof, method="GET", path="/api/v1/auth/sessions")
    last = letters.index(proof[-1])
    same_bytes = [c for i, c in enumerate(letters) if i >> 4 == last >> 4 and c != proof[-1]]
    assert len(same_bytes) == 15
    for char in same_bytes:
        with pytest.raises(ProofError, match="malformed"):
            _verifier().verify(proof[:-1] + char, method="GET", path="/api/v1/auth/sessions")


def test_htu_ignores_query_fragment_case_and_default_port() -> None:
    key = ProofKey("EdDSA")
    v = _verifier()
    for htu in (
        "HTTPS://Gateway.TEST:443/api/v1/auth/sessions?x=1#frag",
        f"{BASE_URL}/api/v1/auth/sessions",
    ):
        v.verify(key.proof("GET", htu), method="GET", path="/api/v1/auth/sessions")
    with pytest.raises(ProofError, match="htu"):
        v.verify(
            key.proof("GET", "http://gateway.test/api/v1/auth/sessions"),
            method="GET",
            path="/api/v1/auth/sessions",
        )


@pytest.mark.parametrize(
    "htu",
    [
        "https://user@gateway.test/api/v1/auth/sessions",  # userinfo
        "https://user:secret@gateway.test/api/v1/auth/sessions",
        "https://evil.example@gateway.test/api/v1/auth/sessions",
        "https://gateway.test:0443/api/v1/auth/sessions",  # a port with a leading zero
        "https://gateway.test:00443/api/v1/auth/sessions",
        "https://gateway.test:0/api/v1/auth/sessions",  # port 0 was dropped like a default
        f"{SESSIONS}\n",  # urlsplit() deletes CR, LF and tab, strips surrounding blanks
        f"{SESSIONS}\r\n",
        "https://gateway.test/api/v1/auth/\tsessions",
        f" {SESSIONS}",
        f"{SESSIONS}\x00",
        "https://gateway.test/api/v1/auth/sessions\u00e9",  # not a URI character
    ],
)
def test_htu_with_userinfo_a_zero_padded_port_or_stray_characters_is_refused(htu: str) -> None:
    """Issue 22: each of these normalised to the gateway's own URL and matched (RFC 9449 §4.3
    check 9 wants the request's URI; RFC 3986 §6.2 normalises none of these away)."""
    from gateway.dpop import normalise_htu

    assert normalise_htu(htu) is None
    with pytest.raises(ProofError, match="htu"):
        _verifier().verify(
            ProofKey("EdDSA").proof("GET", htu), method="GET", path="/api/v1/auth/sessions"
        )


def test_htu_with_an_empty_or_explicit_port_still_matches() -> None:
    v = _verifier()
    for htu in ("https://gateway.test:/api/v1/auth/sessions", SESSIONS):
        v.verify(ProofKey("EdDSA").proof("GET", htu), method="GET", path="/api/v1/auth/sessions")


def test_proofs_are_refused_when_public_origin_is_unset() -> None:
    v = ProofVerifier(public_origins=[], iat_window=60, nonces=None)
    with pytest.raises(ProofError, match="dpop_disabled"):
        v.verify(ProofKey().proof("GET", SESSIONS), method="GET", path="/api/v1/auth/sessions")


def test_nonces_rotate_and_accept_the_previous_one_across_instances() -> None:
    now = [1_000_000.0]
    one = Nonces(b"k" * 32, 300, clock=lambda: now[0])
    two = Nonces(b"k" * 32, 300, clock=lambda: now[0])
    first = one.current()
    assert two.current() == first  # derived from shared configuration, no shared state
    now[0] += 300
    assert one.current() != first
    assert two.accepts(first) and two.accepts(one.current())
    now[0] += 300
    assert not two.accepts(first)
    assert not Nonces(b"x" * 32, 300, clock=lambda: now[0]).accepts(one.current())


def test_settings_public_origin(env: dict[str, str]) -> None:
    from servicekit.config import ConfigError

    s = Settings.from_env({**env, "PUBLIC_ORIGIN": "HTTPS://API.example.com:443, http://x:8080"})
    assert s.public_origins == ("https://api.example.com", "http://x:8080")
    assert Settings.from_env(env).public_origins == ()
    assert (s.dpop_iat_window, s.dpop_nonce_required, s.dpop_nonce_rotation) == (60, False, 300)
    for bad in ("api.example.com", "https://api.example.com/", "https://a/b"):
        with pytest.raises(ConfigError, match="PUBLIC_ORIGIN"):
            Settings.from_env({**env, "PUBLIC_ORIGIN": bad})
    with pytest.raises(ConfigError, match="DPOP_IAT_WINDOW"):
        Settings.from_env({**env, "DPOP_IAT_WINDOW": "601"})


# -- login ---------------------------------------------------------------------------------------


async def test_login_with_proof_and_no_origin_puts_a_bound_refresh_token_in_the_body(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    key = ProofKey("ES256")
    async with api_client(gateway, dpop_env) as client:
        response = await dpop_login(client, backend.add_user(), key)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "DPoP"
        assert "set-cookie" not in response.headers
        assert body["refresh_token"] and body["refresh_expires_in"] > 0
        claims = client.app.state.tokens.verify_access(body["access_token"])
        assert claims.jkt == key.thumbprint
        family = await client.app.state.ledger.family_of(
            client.app.state.tokens.verify_refresh(body["refresh_token"])
        )
        assert family is not None and family.jkt == key.thumbprint


async def test_login_with_proof_from_a_browser_keeps_the_cookie_now_bound(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    key = ProofKey("EdDSA")
    async with gateway(dpop_env) as client:
        response = await dpop_login(client, backend.add_user(), key)
        assert response.status_code == 200
        assert response.json()["token_type"] == "DPoP"
        assert "refresh_token" not in response.json()
        cookie = refresh_cookie(response)
        assert cookie is not None
        # the bound cookie alone no longer refreshes ...
        client.cookies.clear()
        alone = await client.post(
            "/api/v1/auth/refresh", headers={"Cookie": f"__Host-tg_refresh={cookie}"}
        )
        assert alone.status_code == 401
        # ... with a proof from the key it does, and the cookie stays a cookie
        with_proof = await client.post(
            "/api/v1/auth/refresh",
            headers={"Cookie": f"__Host-tg_refresh={cookie}", "DPoP": key.proof("POST", REFRESH)},
        )
        assert with_proof.status_code == 200
        assert refresh_cookie(with_proof) and "refresh_token" not in with_proof.json()


async def test_login_without_proof_is_unchanged_and_never_puts_a_refresh_token_in_a_body(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    async with api_client(gateway, dpop_env) as client:
        response = await client.post(
            "/api/v1/auth/login", json={"email": backend.add_user(), "password": PASSWORD}
        )
        assert response.status_code == 200
        assert response.json()["token_type"] == "Bearer"
        assert "refresh_token" not in response.json()
        token = refresh_cookie(response)
        assert token is not None and token not in response.text
        # and that unbound token cannot be turned into a body-mode session with some key
        response = await body_refresh(client, token, ProofKey())
        assert response.status_code == 401


async def test_bad_proofs_at_login_are_400_before_the_password_is_checked(
    gateway: Harness, dpop_env: dict[str, str], env: dict[str, str], backend: FakeBackend
) -> None:
    key = ProofKey()
    email = backend.add_user()
    async with api_client(gateway, dpop_env) as client:
        calls = backend.calls
        for proof in (
            key.proof("POST", REFRESH),
            key.proof("POST", LOGIN, header={"alg": "none"}),
            key.proof("POST", LOGIN, header={"jwk": key.private_jwk}),
            "not-a-jwt",
            # nested past the interpreter's recursion limit, read before the signature
            b64url(b"[" * 3000) + ".e30.AAAA",
        ):
            r = await client.post(
                "/api/v1/auth/login",
                json={"email": email, "password": PASSWORD},
                headers={"DPoP": proof},
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_dpop_proof"
        assert backend.calls == calls
    async with api_client(gateway, env) as client:  # PUBLIC_ORIGIN unset: DPoP is off
        r = await dpop_login(client, email, key)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_dpop_proof"


# -- using a bound access token -------------------------------------------------------------------


async def test_bound_access_token_needs_the_dpop_scheme_and_a_proof_for_this_request(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    key = ProofKey("Ed25519")
    async with api_client(gateway, dpop_env) as client:
        token = (await dpop_login(client, backend.add_user(), key)).json()["access_token"]
        ok = await dpop_get(client, token, key)
        assert ok.status_code == 200, ok.text
        [session] = ok.json()["sessions"]
        assert session["key_bound"] is True and session["jkt"] == key.thumbprint

        # RFC 9449 §7.2: a bound token as a bearer token is refused
        bearer = await client.get(SESSIONS, headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 401
        assert bearer.headers["www-authenticate"].startswith('DPoP error="invalid_token"')

        proof = key.proof("GET", SESSIONS, access_token=token)
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        assert (await client.get(SESSIONS, headers=headers)).status_code == 200
        replay = await client.get(SESSIONS, headers=headers)
        assert replay.status_code == 401

        cases = {
            "no proof": {"Authorization": f"DPoP {token}"},
            "wrong ath": {
                "Authorization": f"DPoP {token}",
                "DPoP": key.proof("GET", SESSIONS, ath=ath(token + "x")),
            },
            "no ath": {"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", SESSIONS)},
            "other key": {
                "Authorization": f"DPoP {token}",
                "DPoP": ProofKey().proof("GET", SESSIONS, access_token=token),
            },
            "other method": {
                "Authorization": f"DPoP {token}",
                "DPoP": key.proof("DELETE", SESSIONS, access_token=token),
            },
            "stale iat": {
                "Authorization": f"DPoP {token}",
                "DPoP": key.proof("GET", SESSIONS, access_token=token, iat=int(time.time()) - 120),
            },
        }
        for name, headers in cases.items():
            r = await client.get(SESSIONS, headers=headers)
            assert r.status_code == 401, name
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith('DPoP error="invalid_dpop_proof"'), name
            assert 'algs="ES256 EdDSA Ed25519"' in challenge, name
            assert r.json()["error"]["code"] == "invalid_dpop_proof"
        two = await client.get(
            SESSIONS,
            headers=[
                ("Authorization", f"DPoP {token}"),
                ("DPoP", key.proof("GET", SESSIONS, access_token=token)),
                ("DPoP", key.proof("GET", SESSIONS, access_token=token)),
            ],
        )
        assert two.status_code == 401


async def test_unbound_token_with_the_dpop_scheme_is_refused(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(dpop_env) as client:
        login = await client.post(
            "/api/v1/auth/login", json={"email": backend.add_user(), "password": PASSWORD}
        )
        token = login.json()["access_token"]
        r = await dpop_get(client, token, ProofKey())
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('DPoP error="invalid_token"')


async def test_replay_cache_down_fails_closed_with_503(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend, tmp_path: Path
) -> None:
    """The gateway's own Redis is killed mid-session: bound requests get 503 with Retry-After,
    never a 200 whose proof was not claimed, and work again once Redis is back, by themselves."""
    redis_server = PrivateRedis(tmp_path / "redis")
    redis_server.start()
    key = ProofKey()
    try:
        async with api_client(gateway, {**dpop_env, "REDIS_URL": redis_server.url}) as client:
            token = (await dpop_login(client, backend.add_user(), key)).json()["access_token"]
            assert (await dpop_get(client, token, key)).status_code == 200
            redis_server.kill()
            for _ in range(2):  # the cache's connection is gone, then refused
                r = await dpop_get(client, token, key)
                assert r.status_code == 503
                assert r.headers["retry-after"]
                assert r.json()["error"]["code"] == "service_unavailable"
            redis_server.start()
            deadline = time.monotonic() + 5
            status = 0
            while status != 200 and time.monotonic() < deadline:
                status = (await dpop_get(client, token, key)).status_code
                if status != 200:
                    await asyncio.sleep(0.1)
            assert status == 200
    finally:
        redis_server.kill()


# -- body-mode refresh and logout -----------------------------------------------------------------


async def test_body_refresh_rotates_retries_and_detects_reuse(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    key = ProofKey()
    async with api_client(gateway, dpop_env, REFRESH_GRACE_SECONDS="2") as client:
        first = (await dpop_login(client, backend.add_user(), key)).json()
        token = first["refresh_token"]
        one = await body_refresh(client, token, key)
        two = await body_refresh(client, token, key)  # a retry inside the grace window
        assert one.status_code == two.status_code == 200
        assert one.json()["refresh_token"] == two.json()["refresh_token"] != token
        assert one.json()["token_type"] == "DPoP"
        assert "set-cookie" not in one.headers
        access = one.json()["access_token"]
        assert client.app.state.tokens.verify_access(access).jkt == key.thumbprint
        await asyncio.sleep(3.1)
        reuse = await body_refresh(client, token, key)
        assert reuse.status_code == 401
        sid = client.app.state.tokens.verify_access(access).sid
        assert sid in client.app.state.revoked
        assert (await dpop_get(client, access, key)).status_code == 401
        assert (await body_refresh(client, one.json()["refresh_token"], key)).status_code == 401


async def test_stolen_refresh_token_with_another_key_is_refused_audited_not_revoked(
    gateway: Harness,
    dpop_env: dict[str, str],
    backend: FakeBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner, thief = ProofKey("ES256"), ProofKey("EdDSA")
    async with api_client(gateway, dpop_env) as client:
        token = (await dpop_login(client, backend.add_user(), owner)).json()["refresh_token"]
        stolen = await body_refresh(client, token, thief)
        assert stolen.status_code == 401
        assert stolen.json()["error"]["code"] == "invalid_token"
        records = [r for r in caplog.records if r.getMessage() == "dpop_key_mismatch"]
        assert records and records[-1].fields["audit"] is True  # type: ignore[attr-defined]
        no_proof = await client.post("/api/v1/auth/refresh", json={"refresh_token": token})
        assert no_proof.status_code == 400
        thief_logout = await client.post(
            "/api/v1/auth/logout",
            json={"refresh_token": token},
            headers={"DPoP": thief.proof("POST", LOGOUT)},
        )
        assert thief_logout.status_code == 401
        # nothing was rotated or revoked: the owner carries on
        mine = await body_refresh(client, token, owner)
        assert mine.status_code == 200


async def test_body_logout_with_the_key_ends_the_session(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    key = ProofKey()
    async with api_client(gateway, dpop_env) as client:
        pair = (await dpop_login(client, backend.add_user(), key)).json()
        r = await client.post(
            "/api/v1/auth/logout",
            json={"refresh_token": pair["refresh_token"]},
            headers={"DPoP": key.proof("POST", LOGOUT)},
        )
        assert r.status_code == 204
        assert "set-cookie" not in r.headers
        assert (await dpop_get(client, pair["access_token"], key)).status_code == 401
        assert (await body_refresh(client, pair["refresh_token"], key)).status_code == 401


# -- server nonces ---------------------------------------------------------------------------------


async def test_nonce_required_login_and_resource(
    gateway: Harness, dpop_env: dict[str, str], backend: FakeBackend
) -> None:
    key = ProofKey()
    email = backend.add_user()
    async with api_client(gateway, dpop_env, DPOP_NONCE_REQUIRED="true") as client:
        first = await dpop_login(client, email, key)
        assert first.status_code == 400
        assert first.json()["error"]["code"] == "use_dpop_nonce"
        nonce = first.headers["dpop-nonce"]
        second = await client.post(
            "/api/v1/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"DPoP": key.proof("POST", LOGIN, nonce=nonce)},
        )
        assert second.status_code == 200
        token = second.json()["access_token"]
        assert second.headers["dpop-nonce"] == nonce
        missing = await dpop_get(client, token, key)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith('DPoP error="use_dpop_nonce"')
        assert missing.headers["dpop-nonce"] == nonce
        assert (await dpop_get(client, token, key, nonce="made-up")).status_code == 401
        assert (await dpop_get(client, token, key, nonce=nonce)).status_code == 200


async def test_cors_allows_the_dpop_header_and_exposes_nonce_and_challenge(
    gateway: Harness, dpop_env: dict[str, str]
) -> None:
    async with gateway(dpop_env) as client:
        preflight = await client.options(
            "/api/v1/auth/refresh",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, dpop",
            },
        )
        assert preflight.status_code == 200
        assert "dpop" in preflight.headers["access-control-allow-headers"].lower()
        r = await client.post("/api/v1/auth/logout-all")
        exposed = r.headers["access-control-expose-headers"].lower()
        assert "dpop-nonce" in exposed and "www-authenticate" in exposed


async def test_concurrent_claims_share_round_trips_and_still_catch_replays(
    redis_url: str, redis_prefix: str
) -> None:
    from gateway.dpop import Proof, ReplayCache
    from gateway.errors import ServiceUnavailable

    client = aioredis.from_url(redis_url)
    try:
        cache = ReplayCache(client, prefix=f"{redis_prefix}batch:", iat_window=60)
        now = int(time.time())
        proofs = [Proof("k", f"jti-{i}", now) for i in range(40)] + [Proof("k", "dup", now)] * 10
        results = await asyncio.gather(*(cache.claim(p) for p in proofs))
        assert results[:40] == [True] * 40
        assert results[40:].count(True) == 1  # one winner among the ten copies
        assert cache.claims == 50 and cache.round_trips < 50
        # the same jti under another key is a different proof
        assert await cache.claim(Proof("other", "dup", now)) is True
        assert await cache.claim(Proof("k", "dup", now)) is False
        # each entry lives as long as its proof could pass the iat check, no longer
        digest = hashlib.sha256(b"k\x00jti-0").digest()[:18]
        ttl = await client.ttl(f"{redis_prefix}batch:dpop:jti:{b64url(digest)}")
        assert 55 <= ttl <= 61

        dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        down = ReplayCache(dead, prefix=f"{redis_prefix}batch:", iat_window=60)
        outcomes = await asyncio.gather(
            *(down.claim(Proof("k", f"d{i}", now)) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, ServiceUnavailable) for o in outcomes)
        await dead.aclose()
        await cache.close()
    finally:
        await client.aclose()


async def test_claims_after_a_failed_round_trip_start_on_a_fresh_connection(
    redis_url: str, redis_prefix: str
) -> None:
    """A round trip cut off before its reply was read (the claiming request cancelled) must not
    leave that reply on the connection for the next claim to take as its own answer."""
    from gateway.dpop import Proof, ReplayCache
    from gateway.errors import ServiceUnavailable

    client = aioredis.from_url(redis_url)
    cache = ReplayCache(client, prefix=f"{redis_prefix}fresh:", iat_window=60)
    now = int(time.time())
    try:
        assert await cache.claim(Proof("k", "a", now)) is True
        task = asyncio.ensure_future(cache.claim(Proof("k", "b", now)))
        await asyncio.sleep(0)  # the request is written, the reply not read yet
        task.cancel()
        with pytest.raises((asyncio.CancelledError, ServiceUnavailable)):
            await task
        # the reply to "b" must not be read as the answer to "a" again (a replay taken as fresh)
        assert await cache.claim(Proof("k", "a", now)) is False
        assert await cache.claim(Proof("k", "c", now)) is True
    finally:
        await cache.close()
        await client.aclose()
