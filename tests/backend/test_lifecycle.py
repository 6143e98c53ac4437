"""The backend's account lifecycle: epochs, the lifecycle call and its scope, password change."""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from typing import cast

import httpx
import pytest
from internal_auth import TokenScope as Scope
from starlette.applications import Starlette

from backend.users import UserStore
from tests.backend.conftest import GATEWAY_ID, Backend

PASSWORD = "correct horse battery"


def _email() -> str:
    return f"life-{secrets.token_hex(4)}@example.test"


def _lifecycle(backend: Backend, user_id: str, *, scope: Scope = Scope.REFRESH_LIFECYCLE) -> int:
    path = f"/internal/lifecycle/users/{user_id}"
    headers = backend.token(GATEWAY_ID, method="GET", path=path, scope=scope)
    return backend.client.get(path, headers=headers).status_code


def _state(backend: Backend, user_id: str) -> dict[str, object]:
    path = f"/internal/lifecycle/users/{user_id}"
    headers = backend.token(GATEWAY_ID, method="GET", path=path, scope=Scope.REFRESH_LIFECYCLE)
    response = backend.client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _store(backend: Backend) -> UserStore:
    app = cast(Starlette, backend.client.app)
    store: UserStore = app.state.users
    return store


def _run(backend: Backend, fn, *args):  # type: ignore[no-untyped-def]
    assert backend.client.portal is not None
    return backend.client.portal.call(fn, *args)


def test_lifecycle_reports_status_roles_and_epochs(backend: Backend) -> None:
    email = _email()
    user_id = backend.create_user(email, PASSWORD, roles=("user", "admin"))
    assert _state(backend, user_id) == {
        "id": user_id,
        "email": email,
        "status": "active",
        "roles": ["user", "admin"],
        "session_epoch": 0,
        "token_epoch": 0,
    }


@pytest.mark.parametrize("scope", [Scope.USER_REQUEST, Scope.AUTH_VALIDATE])
def test_lifecycle_refuses_every_other_scope(backend: Backend, scope: Scope) -> None:
    user_id = backend.create_user(_email(), PASSWORD)
    assert _lifecycle(backend, user_id, scope=scope) == 403


def test_lifecycle_token_cannot_be_replayed_on_another_route(backend: Backend) -> None:
    alice = backend.create_user(_email(), PASSWORD)
    bob = backend.create_user(_email(), PASSWORD)
    path = f"/internal/lifecycle/users/{alice}"

    def for_alice() -> dict[str, str]:
        # a fresh token each time: internal tokens are single-use, and this test is about the
        # route binding, not the replay cache
        return backend.token(GATEWAY_ID, method="GET", path=path, scope=Scope.REFRESH_LIFECYCLE)

    assert backend.client.get(path, headers=for_alice()).status_code == 200
    # bound to alice's path: not bob's, not the epoch list, not another method
    other = f"/internal/lifecycle/users/{bob}"
    assert backend.client.get(other, headers=for_alice()).status_code == 401
    assert backend.client.get("/internal/lifecycle/epochs", headers=for_alice()).status_code == 401
    assert backend.client.get("/v1/notes", headers=for_alice()).status_code in (401, 403)
    assert backend.client.post(path, headers=for_alice()).status_code in (401, 405)
    # and once used, not again on its own route either
    used = for_alice()
    assert backend.client.get(path, headers=used).status_code == 200
    assert backend.client.get(path, headers=used).status_code == 401
    # and nothing without a token
    assert backend.client.get(path).status_code == 401


def test_lifecycle_of_an_unknown_or_malformed_id_is_404(backend: Backend) -> None:
    assert _lifecycle(backend, str(uuid.uuid4())) == 404
    assert _lifecycle(backend, "not-a-uuid") == 404


def test_disable_moves_both_epochs_to_the_next_second_and_enable_keeps_them(
    backend: Backend,
) -> None:
    email = _email()
    user_id = backend.create_user(email, PASSWORD)
    before = time.time()
    disabled = _run(backend, _store(backend).disable, email.upper())
    after = time.time()
    assert disabled is not None
    epoch = disabled.session_epoch
    assert disabled.token_epoch == epoch
    # ceil() of the instant of the change: a token minted before it (iat = floor(t) for some
    # t <= before) is older than the epoch, one minted at or after the epoch is not
    assert math.floor(before) < epoch <= math.ceil(after)
    assert _state(backend, user_id)["status"] == "disabled"
    assert backend.validate(email, PASSWORD).status_code == 401

    # disabling twice changes nothing; enabling lets the user in but revives no epoch
    assert _run(backend, _store(backend).disable, email) is None
    enabled = _run(backend, _store(backend).enable, email)
    assert enabled is not None and enabled.session_epoch == epoch
    assert backend.validate(email, PASSWORD).status_code == 200
    assert _state(backend, user_id)["session_epoch"] == epoch


def test_set_roles_moves_only_the_token_epoch(backend: Backend) -> None:
    email = _email()
    user_id = backend.create_user(email, PASSWORD, roles=("user", "admin"))
    changed = _run(backend, _store(backend).set_roles, email, ("user",))
    assert changed is not None and changed.roles == ("user",)
    state = _state(backend, user_id)
    assert state["session_epoch"] == 0
    assert isinstance(state["token_epoch"], int) and state["token_epoch"] >= int(time.time())
    assert state["roles"] == ["user"]


def test_epoch_list_holds_recent_changes_only(backend: Backend) -> None:
    email = _email()
    user_id = backend.create_user(email, PASSWORD)
    changed = _run(backend, _store(backend).end_sessions, email)
    assert changed is not None
    path = "/internal/lifecycle/epochs"

    def headers() -> dict[str, str]:
        return backend.token(GATEWAY_ID, method="GET", path=path, scope=Scope.REFRESH_LIFECYCLE)

    def listed(since: int) -> set[str]:
        response = backend.client.get(f"{path}?since={since}", headers=headers())
        assert response.status_code == 200
        return {e["id"] for e in response.json()["epochs"]}

    assert user_id in listed(changed.token_epoch)
    assert user_id not in listed(changed.token_epoch + 1)
    assert backend.client.get(f"{path}?since=-1", headers=headers()).status_code == 422


def test_epoch_list_pages_with_a_cursor(backend: Backend) -> None:
    """Issue 22: the list stopped at 10,000 accounts. Pages of ``limit`` now follow ``next``
    to the end: every account once, in (token epoch, id) order."""
    store = _store(backend)
    emails = [_email() for _ in range(5)]
    ids = {backend.create_user(email, PASSWORD) for email in emails}
    since = min(_run(backend, store.end_sessions, email).token_epoch for email in emails)
    path = "/internal/lifecycle/epochs"

    def page(query: str) -> httpx.Response:
        headers = backend.token(GATEWAY_ID, method="GET", path=path, scope=Scope.REFRESH_LIFECYCLE)
        return backend.client.get(f"{path}?since={since}&{query}", headers=headers)

    seen: list[tuple[int, str]] = []
    query, pages = "limit=2", 0
    while True:
        response = page(query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["epochs"]) <= 2
        seen += [(e["token_epoch"], e["id"]) for e in body["epochs"]]
        pages += 1
        if body["next"] is None:
            break
        query = f"limit=2&after={body['next']}"
    assert ids <= {i for _, i in seen}
    assert len(seen) == len(set(seen)) and pages >= 3
    assert seen == sorted(seen, key=lambda e: (e[0], uuid.UUID(e[1])))
    for bad in ("limit=0", "limit=10001", "after=x", "after=1.not-a-uuid", f"after={'9' * 13}.x"):
        refused = page(bad)
        assert refused.status_code == 422, bad
        assert refused.json()["error"]["code"] == "validation_error"


def _change(backend: Backend, user_id: str, current: str, new: str, **extra: str) -> httpx.Response:
    path = "/internal/auth/password"
    headers = backend.token(GATEWAY_ID, method="POST", path=path, scope=Scope.AUTH_VALIDATE)
    body = {"user_id": user_id, "current_password": current, "new_password": new, **extra}
    return backend.client.post(path, json=body, headers=headers)


def test_password_change(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backend.audit")
    email = _email()
    user_id = backend.create_user(email, PASSWORD)
    new = "a brand new passphrase"

    wrong = _change(backend, user_id, "not the password", new)
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "current_password_rejected"
    assert _change(backend, str(uuid.uuid4()), PASSWORD, new).status_code == 403
    assert _change(backend, user_id, PASSWORD, "short").status_code == 422
    assert _state(backend, user_id)["session_epoch"] == 0  # nothing changed so far

    done = _change(backend, user_id, PASSWORD, new)
    assert done.status_code == 200
    state = done.json()
    assert state["session_epoch"] == state["token_epoch"] > 0
    assert backend.validate(email, PASSWORD).status_code == 401
    assert backend.validate(email, new).status_code == 200

    events = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    assert ("password_change_refused", {"user_id": user_id}) in events
    assert any(
        name == "account_changed" and f.get("action") == "password_changed" and f["actor"] == "user"
        for name, f in events
    )
    # no password or hash in any audit line
    for record in caplog.records:
        text = str(getattr(record, "fields", "")) + record.getMessage()
        assert PASSWORD not in text and new not in text and "$argon2" not in text


def test_password_route_needs_the_auth_validate_scope(backend: Backend) -> None:
    user_id = backend.create_user(_email(), PASSWORD)
    path = "/internal/auth/password"
    headers = backend.token(GATEWAY_ID, method="POST", path=path, scope=Scope.REFRESH_LIFECYCLE)
    body = {"user_id": user_id, "current_password": PASSWORD, "new_password": "x" * 12}
    assert backend.client.post(path, json=body, headers=headers).status_code == 403
