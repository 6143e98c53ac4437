"""``tokengate users create|disable`` and ``tokengate backend``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg
from servicekit import config

from backend.errors import BackendError
from backend.passwords import Passwords, params_from_env
from backend.users import UserStore, check_password_policy


def register(sub: argparse._SubParsersAction[Any]) -> None:
    users = sub.add_parser("users", help="manage backend users")
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="add a user (password read from standard input)")
    create.add_argument("--email", required=True)
    create.add_argument("--role", action="append", choices=["admin"], default=[])
    create.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input (never from the command line)",
    )
    create.set_defaults(func=_users_create)
    disable = actions.add_parser("disable", help="stop a user from logging in")
    disable.add_argument("--email", required=True)
    disable.set_defaults(func=_users_disable)

    serve = sub.add_parser("backend", help="run the backend service (settings from environment)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; see README)"
    )
    serve.set_defaults(func=_serve)


def _database_url(args: argparse.Namespace) -> str:
    url = getattr(args, "database_url", None)
    return url or config.get_str(config.environ(), "DATABASE_URL")


def _password_from_stdin() -> str:
    if sys.stdin.isatty():
        print("password: ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


async def _with_store(dsn: str) -> tuple[asyncpg.Pool, UserStore]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    return pool, UserStore(pool)


async def _create(dsn: str, email: str, password: str, roles: tuple[str, ...]) -> str:
    pool, store = await _with_store(dsn)
    try:
        password_hash = await Passwords(params_from_env(config.environ())).hash(password)
        user = await store.create(email, password_hash, roles)
        return str(user.id)
    finally:
        await pool.close()


def _users_create(args: argparse.Namespace) -> int:
    password = _password_from_stdin()
    try:
        check_password_policy(password)
        roles = ("user", *sorted(set(args.role)))
        user_id = asyncio.run(_create(_database_url(args), args.email, password, roles))
    except BackendError as exc:
        print(f"tokengate users create: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tokengate users create: database error: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


async def _disable(dsn: str, email: str) -> bool:
    pool, store = await _with_store(dsn)
    try:
        return await store.disable(email)
    finally:
        await pool.close()


def _users_disable(args: argparse.Namespace) -> int:
    try:
        changed = asyncio.run(_disable(_database_url(args), args.email))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tokengate users disable: database error: {type(exc).__name__}", file=sys.stderr)
        return 1
    if not changed:
        print("tokengate users disable: no active user with that email", file=sys.stderr)
        return 1
    print("disabled")
    return 0


def app_from_env() -> Any:
    """The backend app, settings from the environment (each worker calls this)."""
    from backend.app import create_app
    from backend.settings import Settings

    return create_app(Settings.from_env())


def _serve(args: argparse.Namespace) -> int:
    from servicekit.logs import configure_logging
    from servicekit.metrics import MetricsSettings
    from servicekit.serve import check_workers, serve

    from backend.settings import Settings

    # Validated here, once, before any worker starts.
    check_workers(args.workers)
    settings = Settings.from_env()
    metrics = MetricsSettings.from_env(config.environ())
    configure_logging(settings.log_level, settings.log_format)
    return serve(
        "backend.cli:app_from_env",
        host=args.host,
        port=args.port,
        workers=args.workers,
        metrics=metrics,
        loop="uvloop",
        http="httptools",
    )
