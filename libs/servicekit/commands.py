"""The command line's failures: one small hierarchy, one exit code each, one line each.

Every ``tokengate`` command ends in one of these codes (the README's "Exit codes" table):

====  ======================================================================================
0     done
1     nothing matched, or the data refused it: no such user or session, already exists, a
      password the policy refuses
2     usage or configuration: a bad option, a missing or malformed variable, a database that
      has no tokengate tables yet
3     a dependency is unavailable: PostgreSQL or Redis unreachable or failing; retry later
4     permission: the database role in use may not do this (use the role the command names)
130   interrupted (Ctrl-C)
====  ======================================================================================

Commands raise a :class:`CommandError` (or let a database or Redis failure through);
``tokengate.cli.main`` maps every one to its line and code in one place. Messages never carry a
password, a token or a DSN (which can hold a password).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "EXIT_CODES",
    "CommandError",
    "HelpFormatter",
    "NotFound",
    "PermissionDenied",
    "Unavailable",
    "server_parser",
]


class CommandError(Exception):
    """A command's failure: ``message`` says what to do, ``exit_code`` is the scheme's code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(CommandError):
    """Nothing matched, or the data refused the change (exit 1)."""

    exit_code = 1


class Unavailable(CommandError):
    """PostgreSQL or Redis could not be used (exit 3): retry when it is back."""

    exit_code = 3


class PermissionDenied(CommandError):
    """The database role in use may not do this (exit 4)."""

    exit_code = 4


#: code -> meaning, as the README documents it (``tokengate --help`` prints it too).
EXIT_CODES = {
    0: "done",
    1: "nothing matched (no such user or session), or the data refused it",
    2: "usage or configuration error (an option, a variable, a database not migrated)",
    3: "a dependency (PostgreSQL, Redis) is unavailable: retry later",
    4: "permission: the database role may not do this",
    130: "interrupted",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its variable list), and every option's default."""


def server_parser(
    sub: argparse._SubParsersAction[Any], name: str, *, summary: str, description: str, port: int
) -> argparse.ArgumentParser:
    """``tokengate gateway`` / ``tokengate backend``: the options both servers take."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, formatter_class=HelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=port, help="port to listen on")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1-64; README)")
    return parser
