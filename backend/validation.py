"""Reading and checking request bodies and query parameters: the body itself goes through
:mod:`servicekit.bodies` (415 for another media type, 413 over the limit, 400 for anything that is
not strict JSON), then 422 naming the field for anything of the wrong shape."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from servicekit.bodies import read_json
from starlette.requests import Request

from backend.errors import NotFound, ValidationFailed
from backend.state import backend_state

MAX_JSON_BYTES = 64 * 1024
# ASCII digits only (str.isdigit accepts "²" and other digits int() then refuses), and few enough
# that int() never meets its 4300-digit limit.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")


async def json_object(request: Request, *, allowed: set[str], required: set[str]) -> dict[str, Any]:
    # the gateway streams a body it could not buffer as it arrives: a client that stalls there
    # stalls here, and this bound ends it (408) rather than leaving the request open for ever
    pause = backend_state(request).body_timeout
    data = await read_json(request, limit=MAX_JSON_BYTES, pause=pause)
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValidationFailed(f"unknown field: {unknown[0]}")
    missing = sorted(required - set(data))
    if missing:
        raise ValidationFailed(f"{missing[0]}: required")
    return data


def required_string(data: Mapping[str, Any], name: str, *, min_len: int, max_len: int) -> str:
    """:func:`string_field` for a field that must be present: 422 naming it otherwise."""
    value = string_field(data, name, min_len=min_len, max_len=max_len)
    if value is None:
        raise ValidationFailed(f"{name}: required")
    return value


def string_field(data: Mapping[str, Any], name: str, *, min_len: int, max_len: int) -> str | None:
    if name not in data:
        return None
    value = data[name]
    if not isinstance(value, str):
        raise ValidationFailed(f"{name}: must be a string")
    if not min_len <= len(value) <= max_len:
        raise ValidationFailed(f"{name}: must be {min_len} to {max_len} characters")
    return value


def int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw) or not low <= int(raw) <= high:
        raise ValidationFailed(f"{name}: must be a whole number from {low} to {high}")
    return int(raw)


def uuid_path(request: Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        # a malformed id names nothing, exactly like an id that does not exist
        raise NotFound() from None


def cursor_param(request: Request, name: str) -> tuple[int, uuid.UUID] | None:
    """A keyset cursor ``<whole number>.<uuid>`` (as :func:`cursor` writes it), or ``None``."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    number, _, rest = raw.partition(".")
    try:
        if len(raw) > 64 or not _WHOLE_NUMBER.fullmatch(number):
            raise ValueError(name)
        return int(number), uuid.UUID(rest)
    except ValueError:
        raise ValidationFailed(f"{name}: not a cursor this service wrote") from None


def cursor(number: int, key: uuid.UUID) -> str:
    return f"{number}.{key}"
