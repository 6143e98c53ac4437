"""Check a typed ``app.state`` (``gateway.state.GatewayState``, ``backend.state.BackendState``)
against what a started app really holds: an attribute declared but never set, or set to something
of another type, is exactly what the annotations exist to rule out."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping

from starlette.datastructures import State


def _classes(hint: object) -> tuple[type, ...]:
    """What ``isinstance`` checks an annotation with: a union's members, a generic's origin."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(cls for arg in typing.get_args(hint) for cls in _classes(arg))
    found = origin or hint
    if not isinstance(found, type):
        raise TypeError(f"cannot check an attribute annotated {hint!r}")
    return (found,)


def state_problems(state: State, localns: Mapping[str, object] | None = None) -> list[str]:
    """One line per declared attribute of ``type(state)`` that is unset or of the wrong type, and
    per attribute set but not declared; ``localns`` resolves names the state module imports only
    for type checking."""
    hints = typing.get_type_hints(type(state), localns=dict(localns or {}))
    declared = sorted(hints.keys() - typing.get_type_hints(State).keys())
    if not declared:
        return [f"{type(state).__name__} declares no attributes"]
    problems = []
    for name in declared:
        try:
            value = getattr(state, name)
        except AttributeError:
            problems.append(f"{name}: not set")
            continue
        if not isinstance(value, _classes(hints[name])):
            problems.append(f"{name}: {type(value).__name__}, declared {hints[name]!r}")
    # State keeps its values in _state and lets any name be set (mypy cannot see that either)
    problems += [f"{name}: set but not declared" for name in sorted(state._state.keys() - hints)]
    return problems
