"""The ``tokengate`` command: one entry point, each package registering its own subcommands.

Failures are mapped to one line and one exit code here, in one place (:func:`main`); the codes
are :data:`servicekit.commands.EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from servicekit.commands import EXIT_CODES, CommandError
from servicekit.config import ConfigError

DESCRIPTION = """\
tokengate: an auth gateway for private HTTP services.

The gateway owns login, access and refresh tokens (cookies or DPoP-bound), refresh rotation
with reuse detection, rate limits and revocation; each service behind it trusts only a
short-lived Ed25519-signed internal token the gateway mints per request. Start everything on
one machine with `tokengate dev`; run the services with `tokengate gateway` and `tokengate
backend`; manage accounts and sessions with `tokengate users` and `tokengate sessions`.
Every command takes its settings from environment variables (see each command's --help)."""

#: The database role each group of commands is meant to run as: named in a permission error.
ROLES = {
    "users": "the backend's role (tokengate_backend) in DATABASE_URL",
    "sessions": (
        "the gateway's role (tokengate_gateway) in DATABASE_URL, and for --email a role that "
        "may read users (the backend's) in BACKEND_DATABASE_URL"
    ),
    "ledger": "the gateway's role (tokengate_gateway) in DATABASE_URL",
    "migrate": "a role that owns the schema (a superuser or the database owner)",
    "dev": "the embedded cluster's superuser, or DATABASE_URL's owner",
}


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    return f"exit codes (every command):\n{codes}"


def build_parser() -> argparse.ArgumentParser:
    # Imported here so ``tokengate --help`` stays cheap and a broken optional part (the
    # embedded stack) cannot stop the other commands from loading.
    from servicekit.metrics import version

    from backend import cli as backend_cli
    from gateway import cli as gateway_cli
    from gateway.policy import cli as policy_cli
    from tokengate import audit, certs, client, dev, keys, migrate

    parser = argparse.ArgumentParser(
        prog="tokengate",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tokengate {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys.register(sub)
    certs.register(sub)
    migrate.register(sub)
    backend_cli.register(sub)
    gateway_cli.register(sub)
    policy_cli.register(sub)
    audit.register(sub)
    dev.register(sub)
    client.register(sub)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command]
    for attr in ("users_command", "action", "keys_command", "dev_command"):
        value = getattr(args, attr, None)
        if isinstance(value, str):
            parts.append(value)
    return "tokengate " + " ".join(parts)


def _failure(args: argparse.Namespace, exc: BaseException) -> tuple[str, int] | None:
    """The line and exit code for a failure a command let through; ``None``: a bug (re-raised).

    Database and Redis libraries are imported only here, and only when something failed."""
    import asyncpg
    import redis.exceptions

    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        role = ROLES.get(args.command, "a role with the needed grants")
        # asyncpg's text ("permission denied for table users") names no secret
        return f"{exc}: this command needs {role}", 4
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        return (
            f"{exc}: the database has no tokengate tables; run `tokengate migrate` first "
            "(or check DATABASE_URL names the right database)",
            2,
        )
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        return (
            f"PostgreSQL refused the login ({type(exc).__name__}): check the role in DATABASE_URL",
            2,
        )
    if isinstance(
        exc,
        OSError | TimeoutError | asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError,
    ):
        return (
            f"cannot reach PostgreSQL ({type(exc).__name__}): check DATABASE_URL and that the "
            "server is up, then retry",
            3,
        )
    if isinstance(exc, asyncpg.PostgresError):
        return (
            f"database error ({type(exc).__name__}): retry; if it persists, see the server's log",
            3,
        )
    if isinstance(exc, redis.exceptions.RedisError):
        return f"Redis failed ({type(exc).__name__}): check REDIS_URL and that Redis is up", 3
    return None


def main(argv: Sequence[str] | None = None) -> int:
    # prometheus-client decides where metric values live when it is first imported (below):
    # this process keeps them in memory; only workers of --workers N get the folder.
    requested = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    parser = build_parser()
    from servicekit import metrics

    metrics.requested_dir = requested
    args = parser.parse_args(argv)
    name = _command_name(args)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        # one line per problem, every problem of this run, no traceback
        for message in exc.messages:
            print(f"tokengate: configuration error: {message}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = _failure(args, exc)
        if failure is None:
            raise
        print(f"{name}: {failure[0]}", file=sys.stderr)
        return failure[1]
    return result


if __name__ == "__main__":
    raise SystemExit(main())
