"""``TokenScope`` and the deprecated ``Scope`` alias kept for one release."""

from __future__ import annotations

import internal_auth
import pytest
from internal_auth import TokenScope


def test_scope_values_are_the_wire_values() -> None:
    assert [s.value for s in TokenScope] == [
        "user_request",
        "auth_validate",
        "refresh_lifecycle",
        "anonymous_request",
        "probe",
    ]


def test_old_name_still_works_but_warns() -> None:
    with pytest.warns(DeprecationWarning, match="TokenScope"):
        old = internal_auth.Scope
    assert old is TokenScope


def test_old_name_imports_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="TokenScope"):
        from internal_auth import Scope
    assert Scope.USER_REQUEST is TokenScope.USER_REQUEST


def test_unknown_names_are_still_attribute_errors() -> None:
    with pytest.raises(AttributeError):
        internal_auth.NoSuchThing  # noqa: B018
