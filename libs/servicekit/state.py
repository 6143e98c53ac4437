"""A typed ``app.state`` for a service: :class:`TypedState` and :func:`app_state`.

Starlette's :class:`~starlette.datastructures.State` answers every attribute with ``Any``, so a
misspelt or mistyped read goes unseen by mypy. A service subclasses :class:`TypedState`,
declares each attribute with its type (annotations only: the values stay in Starlette's dict, so
setting and reading work as before), installs an instance in ``create_app``, and narrows
``app.state`` to it with :func:`app_state` where a request starts using it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from starlette.datastructures import State
from starlette.types import Scope

__all__ = ["TypedState", "app_state"]


class TypedState(State):
    """The base of a service's typed ``app.state``: only the declared names can be read."""

    if TYPE_CHECKING:
        # State answers any name with Any (its __getattr__), so a misspelt read would type-check.
        # Hidden from the type checker only, it makes reads of undeclared names an error; at run
        # time State's own lookup is untouched.
        __getattr__ = None  # type: ignore[assignment,misc]


StateT = TypeVar("StateT", bound=TypedState)


def app_state(scope: Scope, cls: type[StateT]) -> StateT:
    """The ``app.state`` of the app serving this ASGI ``scope``, narrowed to ``cls``."""
    state = scope["app"].state
    if not isinstance(state, cls):
        # only an app not built by its service's create_app gets here: a wiring bug, not a
        # request's
        raise RuntimeError(f"app.state is not a {cls.__name__} (app not built by create_app)")
    return state
