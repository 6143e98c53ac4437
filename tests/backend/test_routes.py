"""Every backend route in process, with tokens minted by internal_auth as the gateway mints them."""

from __future__ import annotations

import logging

import pytest
from internal_auth import HEADER, TokenScope

from tests.backend.conftest import GATEWAY_ID, Backend, random_id


def test_healthz_needs_no_token(backend: Backend) -> None:
    assert backend.client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_the_database(backend: Backend) -> None:
    response = backend.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": True}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/me"),
        ("GET", "/v1/notes"),
        ("POST", "/v1/notes"),
        ("GET", "/v1/users"),
        ("POST", "/internal/auth/validate"),
    ],
)
def test_no_token_is_401(backend: Backend, method: str, path: str) -> None:
    response = backend.client.request(method, path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "internal_token_refused"


def test_unknown_path_is_refused_without_a_token(backend: Backend) -> None:
    assert backend.client.get("/admin").status_code == 401


def test_garbage_token_is_401(backend: Backend) -> None:
    response = backend.client.get("/v1/me", headers={HEADER: "not.a.token"})
    assert response.status_code == 401


def test_me_returns_the_callers_profile(backend: Backend) -> None:
    email = f"Me-{random_id()}@Example.test"
    user = backend.create_user(email)
    response = backend.call("GET", "/v1/me", user=user)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == user
    assert body["email"] == email.lower()
    assert body["roles"] == ["user"]
    assert "password_hash" not in body


def test_auth_validate_scope_cannot_call_v1(backend: Backend) -> None:
    user = backend.create_user()
    headers = backend.token(user, method="GET", path="/v1/me", scope=TokenScope.AUTH_VALIDATE)
    response = backend.client.get("/v1/me", headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_user_request_scope_cannot_validate_credentials(backend: Backend) -> None:
    headers = backend.token(
        GATEWAY_ID, method="POST", path="/internal/auth/validate", scope=TokenScope.USER_REQUEST
    )
    response = backend.client.post(
        "/internal/auth/validate", json={"email": "a@b.c", "password": "x" * 10}, headers=headers
    )
    assert response.status_code == 403


def test_token_bound_to_another_path_is_rejected(backend: Backend) -> None:
    user = backend.create_user()
    headers = backend.token(user, method="GET", path="/v1/notes")
    assert backend.client.get("/v1/me", headers=headers).status_code == 401


def test_token_bound_to_another_method_is_rejected(backend: Backend) -> None:
    user = backend.create_user()
    headers = backend.token(user, method="GET", path="/v1/notes")
    response = backend.client.post("/v1/notes", json={"title": "x"}, headers=headers)
    assert response.status_code == 401


def test_x_user_id_header_has_no_effect(backend: Backend) -> None:
    alice = backend.create_user()
    bob = backend.create_user()
    created = backend.call("POST", "/v1/notes", user=bob, json={"title": "bob's"})
    assert created.status_code == 201
    spoof = {"X-User-Id": bob, "X-User-Roles": "admin", "X-Forwarded-User": bob}
    me = backend.call("GET", "/v1/me", user=alice, headers=spoof)
    assert me.json()["id"] == alice
    notes = backend.call("GET", "/v1/notes", user=alice, headers=spoof)
    assert notes.json()["items"] == []
    assert backend.call("GET", "/v1/users", user=alice, headers=spoof).status_code == 403


def test_notes_crud_for_the_owner(backend: Backend) -> None:
    user = backend.create_user()
    created = backend.call("POST", "/v1/notes", user=user, json={"title": "t", "body": "b"})
    assert created.status_code == 201
    note = created.json()
    path = f"/v1/notes/{note['id']}"
    assert backend.call("GET", path, user=user).json()["body"] == "b"
    patched = backend.call("PATCH", path, user=user, json={"body": "new"})
    assert patched.status_code == 200
    assert patched.json()["title"] == "t"
    assert patched.json()["body"] == "new"
    listed = backend.call("GET", "/v1/notes", user=user).json()["items"]
    assert [n["id"] for n in listed] == [note["id"]]
    assert backend.call("DELETE", path, user=user).status_code == 204
    assert backend.call("GET", path, user=user).status_code == 404


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_another_users_note_is_404(backend: Backend, method: str) -> None:
    owner = backend.create_user()
    other = backend.create_user()
    note = backend.call("POST", "/v1/notes", user=owner, json={"title": "private"}).json()
    path = f"/v1/notes/{note['id']}"
    body = {"title": "stolen"} if method == "PATCH" else None
    response = backend.call(method, path, user=other, json=body)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert backend.call("GET", path, user=owner).json()["title"] == "private"


def test_malformed_note_id_is_404(backend: Backend) -> None:
    user = backend.create_user()
    assert backend.call("GET", "/v1/notes/not-a-uuid", user=user).status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "title: required"),
        ({"title": ""}, "title: must be 1 to 200"),
        ({"title": "x" * 201}, "title: must be 1 to 200"),
        ({"title": 5}, "title: must be a string"),
        ({"title": "x", "body": ["list"]}, "body: must be a string"),
        ({"title": "x", "body": "y" * 10_001}, "body: must be 0 to 10000"),
        ({"title": "x", "owner_id": random_id()}, "unknown field: owner_id"),
        (["title"], "must be a JSON object"),
    ],
)
def test_bad_note_bodies_are_422(backend: Backend, body: object, fragment: str) -> None:
    user = backend.create_user()
    response = backend.call("POST", "/v1/notes", user=user, json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert fragment in error["message"]


def test_malformed_json_is_400(backend: Backend) -> None:
    user = backend.create_user()
    headers = {
        **backend.token(user, method="POST", path="/v1/notes"),
        "Content-Type": "application/json",
    }
    response = backend.client.post("/v1/notes", content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_oversized_body_is_413(backend: Backend) -> None:
    user = backend.create_user()
    headers = {
        **backend.token(user, method="POST", path="/v1/notes"),
        "Content-Type": "application/json",
    }
    response = backend.client.post("/v1/notes", content=b" " * (65 * 1024), headers=headers)
    assert response.status_code == 413


def test_users_listing_is_admin_only(backend: Backend) -> None:
    user = backend.create_user()
    response = backend.call("GET", "/v1/users", user=user)
    assert response.status_code == 403


def test_admin_lists_users_with_pagination(backend: Backend) -> None:
    admin = backend.create_user(roles=("user", "admin"))
    for _ in range(3):
        backend.create_user()
    first = backend.call("GET", "/v1/users?limit=2&offset=0", user=admin, roles=("user", "admin"))
    assert first.status_code == 200
    page = first.json()
    assert len(page["items"]) == 2
    assert page["total"] >= 4
    second = backend.call(
        "GET", "/v1/users?limit=2&offset=2", user=admin, roles=("user", "admin")
    ).json()
    assert not {u["id"] for u in page["items"]} & {u["id"] for u in second["items"]}
    bad = backend.call("GET", "/v1/users?limit=0", user=admin, roles=("user", "admin"))
    assert bad.status_code == 422


def test_rejected_tokens_are_audited_without_the_token(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    user = backend.create_user()
    headers = backend.token(user, method="GET", path="/v1/notes")
    with caplog.at_level(logging.WARNING, logger="backend.audit"):
        response = backend.client.get("/v1/me", headers={**headers, "X-Request-Id": "req-123"})
    assert response.status_code == 401
    records = [r for r in caplog.records if r.getMessage() == "internal_token_rejected"]
    assert records, "a rejected internal token must be audited"
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["reason"] == "unbound_request"
    assert fields["iss"] == GATEWAY_ID
    assert headers[HEADER] not in caplog.text


@pytest.mark.parametrize(
    ("sent", "kept"), [("req-123", True), ("bad\r\nid", False), ("x" * 65, False)]
)
def test_request_id_is_the_gateways_when_well_formed(
    backend: Backend, sent: str, kept: bool
) -> None:
    # One RequestIdMiddleware (servicekit) for both services: the backend answers with the id
    # it logged under, the gateway's own when well-formed, a fresh one otherwise.
    response = backend.client.get("/healthz", headers={"X-Request-Id": sent})
    rid = response.headers["x-request-id"]
    assert (rid == sent) is kept
    assert len(rid) == 32 or kept
