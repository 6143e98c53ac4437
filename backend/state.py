"""The backend's ``app.state``, typed: :class:`BackendState` and :func:`backend_state`.

Starlette's :class:`~starlette.datastructures.State` answers every attribute with ``Any``;
:class:`BackendState` declares each one with its type (annotations only: the values stay in
Starlette's dict, so setting and reading work as before) and :func:`backend_state` narrows
``app.state`` to it, so mypy checks every read a route makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from servicekit import db
from starlette.datastructures import State
from starlette.requests import HTTPConnection

from backend.notes import NoteStore
from backend.passwords import Passwords
from backend.users import UserStore


class BackendState(State):
    """What the backend keeps on ``app.state``.

    ``create_app`` sets ``db_outages``; the rest is opened in the lifespan and exists only after
    start-up (reading it before raises ``AttributeError``, as Starlette's ``State`` does).
    """

    #: the database-outage 503 handler (:func:`servicekit.db.exception_handlers`) counts here
    db_outages: db.Outages

    # --- after start-up only ------------------------------------------------------------------
    pool: db.Database
    users: UserStore
    notes: NoteStore
    #: argon2id hashing and checks (tests hand ``create_app`` cheaper parameters)
    passwords: Passwords

    if TYPE_CHECKING:
        # Starlette's State answers any name with Any (its __getattr__), so a misspelt read would
        # type-check. Hidden from the type checker only, it makes reads of undeclared names an
        # error; at run time State's own lookup is untouched.
        __getattr__ = None  # type: ignore[assignment,misc]


def backend_state(conn: HTTPConnection) -> BackendState:
    """The state of the backend app serving this request."""
    state = conn.app.state
    if not isinstance(state, BackendState):
        # only an app not built by backend.app.create_app gets here: a wiring bug
        raise RuntimeError("app.state is not a BackendState (app not built by create_app)")
    return state
