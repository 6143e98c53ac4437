"""DPoP end to end: the real backend and two gateway processes behind one public origin, real
PostgreSQL and Redis. Proofs come from PyJWT (``tests/support/dpop_proofs.py``), an independent
JOSE implementation, so these tests also check interoperability.

Both gateways are configured with ``PUBLIC_ORIGIN=https://api.example.test`` (as behind a load
balancer): a proof names that origin whichever instance the request reaches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.dpop_proofs import ProofKey, ath
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

PUBLIC = "https://api.example.test"
PASSWORD = "e2e dpop correct horse battery staple"
ME = f"{PUBLIC}/api/v1/me"
NOTES = f"{PUBLIC}/api/v1/notes"
REFRESH = f"{PUBLIC}/api/v1/auth/refresh"


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env={
            "PUBLIC_ORIGIN": PUBLIC,
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
            "REFRESH_RATE_LIMIT": "1000/minute",
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def second_gateway(stack: Stack) -> Iterator[str]:
    with stack.extra_gateway() as url:
        yield url


class Client:
    """A non-browser client (no Origin) logged in with a DPoP key."""

    def __init__(self, stack: Stack, key: ProofKey, email: str | None = None) -> None:
        self.key = key
        self.email = email or f"dpop-{time.monotonic_ns()}@example.test"
        if email is None:
            stack.create_user(self.email, PASSWORD)
        self.http = httpx.Client(base_url=stack.gateway_url, timeout=30)
        r = self.http.post(
            "/api/v1/auth/login",
            json={"email": self.email, "password": PASSWORD},
            headers={"DPoP": key.proof("POST", f"{PUBLIC}/api/v1/auth/login")},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "DPoP" and "set-cookie" not in r.headers
        self.access: str = body["access_token"]
        self.refresh: str = body["refresh_token"]

    def headers(self, method: str, url: str, **claims: Any) -> dict[str, str]:
        proof = self.key.proof(method, url, access_token=self.access, **claims)
        return {"Authorization": f"DPoP {self.access}", "DPoP": proof}


def test_bound_token_reaches_the_backend_only_with_a_proof_for_this_request(stack: Stack) -> None:
    for alg in ("ES256", "EdDSA", "Ed25519"):
        c = Client(stack, ProofKey(alg))
        ok = c.http.get("/api/v1/me", headers=c.headers("GET", ME))
        assert ok.status_code == 200, (alg, ok.text)
        assert ok.json()["email"] == c.email
        # a query string is not part of htu (RFC 9449 §4.3)
        assert c.http.get("/api/v1/notes?limit=1", headers=c.headers("GET", NOTES)).is_success

    c = Client(stack, ProofKey())
    refused = {
        "proof for another method": c.headers("POST", ME),
        "proof for another path": c.headers("GET", NOTES),
        "iat before the window": c.headers("GET", ME, iat=int(time.time()) - 61 - 5),
        "iat after the window": c.headers("GET", ME, iat=int(time.time()) + 61 + 5),
        "wrong ath": {**c.headers("GET", ME), "DPoP": c.key.proof("GET", ME, ath=ath("x"))},
        "another key": {
            **c.headers("GET", ME),
            "DPoP": ProofKey().proof("GET", ME, access_token=c.access),
        },
    }
    for name, headers in refused.items():
        r = c.http.get("/api/v1/me", headers=headers)
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"'), name
    as_bearer = c.http.get("/api/v1/me", headers={"Authorization": f"Bearer {c.access}"})
    assert as_bearer.status_code == 401
    assert as_bearer.headers["www-authenticate"].startswith('DPoP error="invalid_token"')


def test_a_proof_replayed_on_a_second_gateway_instance_is_refused(
    stack: Stack, second_gateway: str
) -> None:
    c = Client(stack, ProofKey())
    headers = c.headers("GET", ME)
    assert c.http.get("/api/v1/me", headers=headers).status_code == 200
    other = httpx.get(f"{second_gateway}/api/v1/me", headers=headers, timeout=30)
    assert other.status_code == 401
    assert other.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    # a fresh proof works on the second instance: only the replay was refused
    fresh = httpx.get(f"{second_gateway}/api/v1/me", headers=c.headers("GET", ME), timeout=30)
    assert fresh.status_code == 200


def test_stolen_refresh_token_with_another_key_is_refused_and_audited(stack: Stack) -> None:
    c = Client(stack, ProofKey("EdDSA"))
    thief = ProofKey("ES256")
    r = httpx.post(
        f"{stack.gateway_url}/api/v1/auth/refresh",
        json={"refresh_token": c.refresh},
        headers={"DPoP": thief.proof("POST", REFRESH)},
        timeout=30,
    )
    assert r.status_code == 401
    assert '"dpop_key_mismatch"' in stack.log_text("gateway")
    # not a revocation: the owner's session lives on
    assert c.http.get("/api/v1/me", headers=c.headers("GET", ME)).status_code == 200
    mine = c.http.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": c.refresh},
        headers={"DPoP": c.key.proof("POST", REFRESH)},
    )
    assert mine.status_code == 200


def test_twenty_concurrent_body_mode_refreshes_converge_on_one_successor(stack: Stack) -> None:
    c = Client(stack, ProofKey())

    def refresh(_: int) -> httpx.Response:
        return httpx.post(
            f"{stack.gateway_url}/api/v1/auth/refresh",
            json={"refresh_token": c.refresh},
            headers={"DPoP": c.key.proof("POST", REFRESH)},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(refresh, range(20)))
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 20, statuses
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1 and c.refresh not in successors
    [successor] = successors
    assert all(r.json()["token_type"] == "DPoP" for r in responses)
    # the successor keeps the binding and refreshes on
    c.refresh = successor
    again = c.http.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": successor},
        headers={"DPoP": c.key.proof("POST", REFRESH)},
    )
    assert again.status_code == 200
    c.access = again.json()["access_token"]
    assert c.http.get("/api/v1/me", headers=c.headers("GET", ME)).status_code == 200
