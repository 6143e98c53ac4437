"""A policy's expected decisions, kept next to it and run in CI (``tokengate policy test``).

The case file is TOML, one ``[[case]]`` per request::

    [[case]]
    name = "anyone reads a public file"     # optional: shown when the case fails
    method = "GET"
    path = "/files/public/a"                # as rules write it (relative to /api/v1)
    anonymous = true                        # no token; or:
    # roles = ["admin"]                     # an authenticated user with these roles
    # user = "3f2c..."                      # ... and this id
    expect = "allow"                        # or "deny"

Without ``roles``, ``user`` or ``anonymous`` the caller is an authenticated user with no roles.
A case's decision is the gateway's: the path the proxy refuses, a path no route takes and a
request the rules deny are all ``deny``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.table import Caller

#: Largest case file read (bytes), and most cases in one.
MAX_CASES_BYTES = 1024 * 1024
MAX_CASES = 10_000
_KEYS = frozenset({"name", "method", "path", "roles", "user", "anonymous", "expect"})
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
#: The subject of a caller given no ``user``: no user id (a uuid) can equal it.
ANY_USER = "(any user)"


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    method: str
    path: str
    caller: Caller | None
    expect_allow: bool


class CasesError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def caller_from(roles: list[str], user: str | None, anonymous: bool) -> Caller | None:
    if anonymous:
        return None
    return Caller(user if user is not None else ANY_USER, frozenset(roles))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def load_cases(path: str) -> list[Case]:
    """The cases of ``path``; :class:`CasesError` names every problem (``FILE: case N: ...``)."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_CASES_BYTES + 1)
    except OSError as exc:
        raise CasesError([f"{path}: cannot be read ({exc.strerror})"]) from None
    if len(raw) > MAX_CASES_BYTES:
        raise CasesError([f"{path}: larger than {MAX_CASES_BYTES} bytes"])
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CasesError([f"{path}: is not valid UTF-8 TOML ({exc})"]) from None
    problems: list[str] = []
    extra = set(data) - {"case"}
    if extra:
        problems.append(f"{path}: unknown top-level key(s) {', '.join(sorted(extra))}")
    tables = data.get("case")
    if not isinstance(tables, list) or not tables:
        raise CasesError([*problems, f"{path}: has no [[case]] table"])
    if len(tables) > MAX_CASES:
        raise CasesError([f"{path}: more than {MAX_CASES} cases"])
    cases: list[Case] = []
    for number, table in enumerate(tables, 1):
        where = f"{path}: case {number}"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            continue
        bad = [
            *(f"{key} is not a known key" for key in sorted(set(table) - _KEYS)),
            *(
                [f"method {table.get('method')!r} is not an upper-case HTTP method"]
                if not (isinstance(table.get("method"), str) and _METHOD.fullmatch(table["method"]))
                else []
            ),
            *(
                [f"path {table.get('path')!r} must be a string starting with '/'"]
                if not (isinstance(table.get("path"), str) and table["path"].startswith("/"))
                else []
            ),
            *(
                ['expect must be "allow" or "deny"']
                if table.get("expect") not in ("allow", "deny")
                else []
            ),
            *(
                ["roles must be an array of strings"]
                if not _strings(table.get("roles", []))
                else []
            ),
            *(
                ["user must be a non-empty string"]
                if "user" in table and not (isinstance(table["user"], str) and table["user"])
                else []
            ),
            *(
                ["anonymous must be true or false"]
                if not isinstance(table.get("anonymous", False), bool)
                else []
            ),
            *(
                ["anonymous cannot also have roles or a user"]
                if table.get("anonymous") is True and ("roles" in table or "user" in table)
                else []
            ),
        ]
        if bad:
            problems += [f"{where}: {reason}" for reason in bad]
            continue
        name = table.get("name")
        label = f"case {number}" + (f" ({name})" if isinstance(name, str) and name else "")
        cases.append(
            Case(
                label=label,
                method=table["method"],
                path=table["path"],
                caller=caller_from(
                    table.get("roles", []), table.get("user"), table.get("anonymous", False)
                ),
                expect_allow=table["expect"] == "allow",
            )
        )
    if problems:
        raise CasesError(problems)
    return cases


def describe(caller: Caller | None) -> str:
    if caller is None:
        return "anonymous"
    who = "any user" if caller.sub == ANY_USER else f"user {caller.sub}"
    roles = ",".join(sorted(caller.roles)) or "no roles"
    return f"{who}, {roles}"
