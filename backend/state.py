"""The backend's ``app.state``, typed: :class:`BackendState` and :func:`backend_state`.

:class:`BackendState` declares each attribute with its type (see :mod:`servicekit.state`) and
:func:`backend_state` narrows ``app.state`` to it, so mypy checks every read a route makes.
"""

from __future__ import annotations

from servicekit import db
from servicekit.audit import BatchWriter
from servicekit.state import TypedState, app_state
from starlette.requests import HTTPConnection

from backend.notes import NoteStore
from backend.passwords import Passwords
from backend.users import UserStore


class BackendState(TypedState):
    """What the backend keeps on ``app.state``.

    ``create_app`` sets ``db_outages``; the rest is opened in the lifespan and exists only after
    start-up (reading it before raises ``AttributeError``, as Starlette's ``State`` does).
    """

    #: the database-outage 503 handler (:func:`servicekit.db.exception_handlers`) counts here
    db_outages: db.Outages
    #: seconds a request body may pause between two pieces (``BODY_READ_TIMEOUT``; 408 beyond)
    body_timeout: float

    # --- after start-up only ------------------------------------------------------------------
    pool: db.Database
    users: UserStore
    notes: NoteStore
    #: argon2id hashing and checks (tests hand ``create_app`` cheaper parameters)
    passwords: Passwords
    #: audit events that change nothing (rejected internal tokens, refused password changes)
    audit: BatchWriter


def backend_state(conn: HTTPConnection) -> BackendState:
    """The state of the backend app serving this request."""
    return app_state(conn.scope, BackendState)
