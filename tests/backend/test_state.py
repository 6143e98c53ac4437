"""``app.state`` is a :class:`backend.state.BackendState`; once started, the backend has set every
attribute it declares, each of its declared type."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from backend.state import BackendState, backend_state
from tests.backend.conftest import Backend
from tests.support.app_state import state_problems


def test_started_backend_sets_every_declared_attribute(backend: Backend) -> None:
    app = backend.client.app
    assert isinstance(app, Starlette)
    assert isinstance(app.state, BackendState)
    assert state_problems(app.state) == []
    assert backend.client.get("/readyz").status_code == 200


def test_an_app_not_built_by_create_app_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not a BackendState"):
        backend_state(Request({"type": "http", "app": Starlette()}))
