"""The backend accepts each internal token once: a captured token is no replay key, and a
captured ``auth_validate`` token is no password oracle past the gateway's limits."""

from __future__ import annotations

from internal_auth import TokenScope

from tests.backend.conftest import GATEWAY_ID, Backend, random_id


def test_a_captured_user_token_is_accepted_once(backend: Backend) -> None:
    user = backend.create_user()
    headers = backend.token(user, method="GET", path="/v1/me")
    assert backend.client.get("/v1/me", headers=headers).status_code == 200
    for _ in range(20):
        replay = backend.client.get("/v1/me", headers=headers)
        assert replay.status_code == 401
        assert replay.json()["error"]["code"] == "internal_token_refused"


def test_a_captured_credential_check_token_is_no_password_oracle(backend: Backend) -> None:
    email = f"oracle-{random_id()[:8]}@example.test"
    backend.create_user(email, "the right password")
    path = "/internal/auth/validate"
    headers = backend.token(GATEWAY_ID, method="POST", path=path, scope=TokenScope.AUTH_VALIDATE)
    first = backend.client.post(path, json={"email": email, "password": "guess 1"}, headers=headers)
    assert first.status_code == 401
    assert first.json()["error"]["code"] == "invalid_credentials"
    # The right password with the same (captured) token: refused before any check runs.
    again = backend.client.post(
        path, json={"email": email, "password": "the right password"}, headers=headers
    )
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "internal_token_refused"
    assert backend.validate(email, "the right password").status_code == 200
