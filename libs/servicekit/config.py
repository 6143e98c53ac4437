"""Reading settings from the environment, the one way both services do it.

Every secret variable ``NAME`` may instead be given as ``NAME_FILE``, a path whose contents are the
value (Docker and Kubernetes secrets). Giving both is an error: silently preferring one hides a
misconfiguration.

Every reader of a service's environment adds what is wrong to one :class:`Problems` list, so a
start-up names **every** missing or malformed variable in one run (one line each), not the first
one an operator then fixes before meeting the next.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypeVar, overload

T = TypeVar("T")


class ConfigError(Exception):
    """Settings missing or malformed. Each message names its variable and what to do."""

    def __init__(self, *messages: str) -> None:
        super().__init__("\n".join(messages))
        self.messages: tuple[str, ...] = messages


class Problems:
    """Collects the :class:`ConfigError` of every reader it runs, then raises them together.

    ``value = problems.take(lambda: get_int(env, "X", 1), 1)``: the reader's value, or (when it
    failed, its messages noted) ``fallback``, so later readers that depend on it still run.
    The fallbacks never reach a settings object: :meth:`check` raises before that.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def take(self, read: Callable[[], T], fallback: T) -> T:
        try:
            return read()
        except ConfigError as exc:
            self.messages.extend(exc.messages)
            return fallback

    def check(self) -> None:
        if self.messages:
            # the same message twice (one variable read by two readers) is said once
            raise ConfigError(*dict.fromkeys(self.messages))


@overload
def env_or_file(
    environ: Mapping[str, str], name: str, *, required: Literal[True] = True
) -> str: ...
@overload
def env_or_file(environ: Mapping[str, str], name: str, *, required: bool) -> str | None: ...
def env_or_file(environ: Mapping[str, str], name: str, *, required: bool = True) -> str | None:
    """Return ``name`` from ``environ``, or the contents of the file named by ``name_FILE``."""
    direct = environ.get(name)
    file_var = f"{name}_FILE"
    path = environ.get(file_var)
    if direct and path:
        raise ConfigError(f"{name} and {file_var} are both set; set only one of them")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{file_var}: cannot read {path!r} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{file_var}: {path!r} is empty")
        return value
    if direct:
        return direct
    if required:
        raise ConfigError(f"{name} is not set (set {name} or {file_var})")
    return None


def get_str(environ: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = environ.get(name, default)
    if value is None or value == "":
        raise ConfigError(f"{name} is not set")
    return value


def get_int(environ: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def get_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A duration that bounds something: more than 0 (a zero bound would refuse everything,
    and "no bound" is not a value a bound may take)."""
    value = get_float(environ, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be more than 0 seconds, got {value}")
    return value


def get_float(
    environ: Mapping[str, str], name: str, default: float, *, minimum: float = 0
) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def get_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def get_list(
    environ: Mapping[str, str], name: str, default: tuple[str, ...] = ()
) -> tuple[str, ...]:
    raw = environ.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def environ() -> Mapping[str, str]:
    return os.environ
