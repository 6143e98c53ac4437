"""``tokengate users create|disable|enable|set-roles|set-password|end-sessions|list|show`` and
``tokengate backend``.

The ``users`` commands need only the backend's own database role (``DATABASE_URL``), never a
superuser. Those that end sessions or change roles move the user's epochs in the same
``UPDATE`` and then publish them on Redis (``REDIS_URL``, ``REDIS_KEY_PREFIX``: the gateways'
values) so live access tokens die within a second; without Redis the change still holds for
every refresh at once, and for access tokens at the gateways' next epoch reload.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from servicekit import config, pg_url, tls
from servicekit.audit import writer_id
from servicekit.commands import NotFound, server_parser
from servicekit.logs import configure_logging

from backend import audit, broadcast
from backend.errors import BackendError
from backend.passwords import Passwords, params_from_env
from backend.users import User, UserStore, check_password_policy

BACKEND_HELP = """\
Run the identity service (users, credentials, notes) behind the gateway. Settings come from
the environment (README, "Configuration").

required:
  DATABASE_URL              PostgreSQL, the backend's role (postgresql://tokengate_backend@...)
  INTERNAL_JWT_PUBLIC_KEY   the gateway's Ed25519 public key(s): PEM or JWKS (or *_FILE)

often set (default):
  GATEWAY_ID (tokengate-gateway: the issuer it trusts), BACKEND_ID (tokengate-backend: its
  audience), ARGON2_TIME_COST (3), ARGON2_MEMORY_KIB (65536), ARGON2_MAX_CONCURRENT (half the
  CPUs), DB_POOL_MAX (10), METRICS_PORT (off), LOG_LEVEL (INFO), LOG_FORMAT (json)"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    users = sub.add_parser("users", help="manage backend users")
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="add a user (password read from standard input)")
    create.add_argument("--email", required=True)
    create.add_argument("--role", action="append", choices=["admin"], default=[])
    _password_stdin_flag(create)
    create.set_defaults(func=_users_create)
    disable = actions.add_parser(
        "disable", help="stop a user from logging in and end all their sessions"
    )
    disable.add_argument("--email", required=True)
    disable.set_defaults(func=_users_disable)
    enable = actions.add_parser("enable", help="let a disabled user log in again (new sessions)")
    enable.add_argument("--email", required=True)
    enable.set_defaults(func=_users_enable)
    set_roles = actions.add_parser(
        "set-roles", help="replace a user's roles (live access tokens stop at once)"
    )
    set_roles.add_argument("--email", required=True)
    set_roles.add_argument(
        "--role",
        action="append",
        choices=["user", "admin"],
        required=True,
        help="repeat for several; the complete new set",
    )
    set_roles.set_defaults(func=_users_set_roles)
    set_password = actions.add_parser(
        "set-password", help="set a user's password and end all their sessions"
    )
    set_password.add_argument("--email", required=True)
    _password_stdin_flag(set_password)
    set_password.set_defaults(func=_users_set_password)
    end = actions.add_parser("end-sessions", help="log a user out everywhere")
    end.add_argument("--email", required=True)
    end.set_defaults(func=_users_end_sessions)
    listing = actions.add_parser("list", help="every user: id, email, roles, status, created")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1-10000)")
    listing.add_argument("--offset", type=int, default=0, help="skip this many first")
    listing.set_defaults(func=_users_list)
    show = actions.add_parser("show", help="one user: id, email, roles, status, epochs")
    show.add_argument("--email", required=True)
    show.set_defaults(func=_users_show)

    serve = server_parser(
        sub,
        "backend",
        summary="run the backend service (settings from environment)",
        description=BACKEND_HELP,
        port=8001,
    )
    tls.add_server_arguments(serve)
    serve.set_defaults(func=_serve)


def _password_stdin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input (never from the command line)",
    )


def _database_url(args: argparse.Namespace) -> str:
    url = getattr(args, "database_url", None)
    if url:
        return pg_url.checked(url, name="--database-url")
    return pg_url.checked(config.get_str(config.environ(), "DATABASE_URL"))


def _password_from_stdin() -> str:
    if sys.stdin.isatty():
        print("password: ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


async def _with_store(dsn: str) -> tuple[asyncpg.Pool, UserStore]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    # each command is its own audit chain: backend/<host>/cli-<pid>
    return pool, UserStore(pool, audit_writer=writer_id("backend", f"cli-{os.getpid()}"))


async def _create(dsn: str, email: str, password: str, roles: tuple[str, ...]) -> str:
    pool, store = await _with_store(dsn)
    try:
        password_hash = await Passwords(params_from_env(config.environ())).hash(password)
        user = await store.create(email, password_hash, roles)
        return str(user.id)
    finally:
        await pool.close()


def _users_create(args: argparse.Namespace) -> int:
    dsn = _database_url(args)
    password = _password_from_stdin()
    try:
        check_password_policy(password)
        roles = ("user", *sorted(set(args.role)))
        user_id = asyncio.run(_create(dsn, args.email, password, roles))
    except BackendError as exc:
        # the data refused it (taken, invalid address, password policy): exit 1
        raise NotFound(exc.message) from None
    print(user_id)
    return 0


Change = Callable[[UserStore], Awaitable[User | None]]


async def _change(dsn: str, change: Change) -> User | None:
    pool, store = await _with_store(dsn)
    try:
        return await change(store)
    finally:
        await pool.close()


def _run_change(
    args: argparse.Namespace, name: str, action: str, change: Change, *, publish: bool = True
) -> int:
    """Apply ``change``; audit, broadcast the new epochs, report. Exit 1 if no user matched."""
    command = f"tokengate users {name}"
    dsn = _database_url(args)
    try:
        user = asyncio.run(_change(dsn, change))
    except BackendError as exc:
        raise NotFound(exc.message) from None
    if user is None:
        raise NotFound(f"no user with email {args.email!r} (or nothing to change)")
    # the audit line goes to stderr as a structured JSON line, like the services' own
    configure_logging("INFO", config.environ().get("LOG_FORMAT", "json"))
    audit.account_changed(action, user_id=str(user.id), actor="operator")
    if publish:
        problem = asyncio.run(broadcast.publish(config.environ(), user))
        if problem is not None:
            # The change is committed and every refresh already obeys it; only live access
            # tokens wait for the gateways' periodic epoch reload instead of a second.
            print(
                f"{command}: warning: not broadcast ({problem}); live access tokens end at the"
                " gateways' next epoch reload (EPOCH_RELOAD_INTERVAL)",
                file=sys.stderr,
            )
    print(action.replace("_", " "))
    return 0


def _users_disable(args: argparse.Namespace) -> int:
    return _run_change(args, "disable", "disabled", lambda s: s.disable(args.email))


def _users_enable(args: argparse.Namespace) -> int:
    # Nothing to broadcast: enabling revives no session, it only allows new logins.
    return _run_change(args, "enable", "enabled", lambda s: s.enable(args.email), publish=False)


def _users_set_roles(args: argparse.Namespace) -> int:
    roles = tuple(sorted(set(args.role)))
    return _run_change(args, "set-roles", "roles_changed", lambda s: s.set_roles(args.email, roles))


def _users_end_sessions(args: argparse.Namespace) -> int:
    return _run_change(args, "end-sessions", "sessions_ended", lambda s: s.end_sessions(args.email))


def _users_set_password(args: argparse.Namespace) -> int:
    _database_url(args)  # a bad DATABASE_URL is said before a password is asked for
    password = _password_from_stdin()
    try:
        check_password_policy(password)
    except BackendError as exc:
        raise NotFound(exc.message) from None

    async def change(store: UserStore) -> User | None:
        # one statement by email, reading no hash: the operator's password replaces whatever
        # is there, and a login's rehash of the old one cannot come back over it (it is
        # conditional on the hash it read: backend.users)
        password_hash = await Passwords(params_from_env(config.environ())).hash(password)
        return await store.set_password(args.email, password_hash)

    return _run_change(args, "set-password", "password_changed", change)


def _status(user: User) -> str:
    return "active" if user.disabled_at is None else "disabled"


def _users_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000 or args.offset < 0:
        raise config.ConfigError("--limit must be 1 to 10000 and --offset at least 0")
    dsn = _database_url(args)

    async def page() -> tuple[list[User], int]:
        pool, store = await _with_store(dsn)
        try:
            return await store.page(limit=args.limit, offset=args.offset)
        finally:
            await pool.close()

    users, total = asyncio.run(page())
    print(f"{'id':36}  {'status':8}  {'created':25}  {'roles':12}  email")
    for user in users:
        print(
            f"{user.id!s:36}  {_status(user):8}  "
            f"{user.created_at.isoformat(timespec='seconds'):25}  "
            f"{','.join(user.roles):12}  {user.email}"
        )
    shown = f"{args.offset + 1}-{args.offset + len(users)}" if users else "none"
    print(f"{shown} of {total} user(s)", file=sys.stderr)
    return 0


def _users_show(args: argparse.Namespace) -> int:
    dsn = _database_url(args)

    async def one() -> User | None:
        pool, store = await _with_store(dsn)
        try:
            return await store.by_email(args.email)
        finally:
            await pool.close()

    user = asyncio.run(one())
    if user is None:
        raise NotFound(f"no user with email {args.email!r}")
    for key, value in (
        ("id", str(user.id)),
        ("email", user.email),
        ("roles", ",".join(user.roles)),
        ("status", _status(user)),
        ("created", user.created_at.isoformat(timespec="seconds")),
        ("disabled", user.disabled_at.isoformat(timespec="seconds") if user.disabled_at else "-"),
        ("session_epoch", str(user.session_epoch)),
        ("token_epoch", str(user.token_epoch)),
    ):
        print(f"{key + ':':15}{value}")
    return 0


def app_from_env() -> Any:
    """The backend app, settings from the environment (each worker calls this)."""
    from backend.app import create_app
    from backend.settings import Settings

    return create_app(Settings.from_env())


def _serve(args: argparse.Namespace) -> int:
    from servicekit.metrics import MetricsSettings
    from servicekit.serve import check_workers, serve

    from backend import metrics as backend_metrics
    from backend.settings import Settings

    # Validated here, once, before any worker starts; every problem named in one run.
    problems = config.Problems()
    problems.take(lambda: check_workers(args.workers), 1)
    server_tls = problems.take(lambda: tls.ServerTLS.from_args(args), None)
    settings = problems.take(Settings.from_env, None)
    metrics = problems.take(lambda: MetricsSettings.from_env(config.environ()), MetricsSettings())
    problems.check()
    assert settings is not None  # check() raised otherwise
    configure_logging(settings.log_level, settings.log_format)
    return serve(
        "backend.cli:app_from_env",
        host=args.host,
        port=args.port,
        workers=args.workers,
        metrics=metrics,
        limits=settings.connections,
        pooled=settings.pool.max_size + 8,
        registry=backend_metrics.REGISTRY,
        loop="uvloop",
        **(server_tls.uvicorn_options("backend") if server_tls else {}),
    )
