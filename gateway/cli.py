"""``tokengate gateway`` (run the server), ``tokengate sessions list|revoke`` and
``tokengate ledger prune`` (operators).

``sessions`` works on the refresh-family ledger directly and publishes revocations to Redis, so
a revoked family's access tokens stop working on every running gateway within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import sys
import time
import uuid
from typing import Any

import asyncpg
from servicekit import redis_url
from servicekit.audit import Event, append, writer_id
from servicekit.commands import NotFound, PermissionDenied, Unavailable, server_parser
from servicekit.config import ConfigError, Problems
from servicekit.emails import normalise_email
from servicekit.terminal import printable

from gateway.sessions.ledger import PRUNE_BATCH, Ledger
from gateway.sessions.revocation import RevokedSessions
from gateway.settings import OperatorSettings, PruneSettings, Settings

# Objects allocated (net) between two collections of the youngest generation; Python's is 700.
GC_THRESHOLD_0 = 50_000


GATEWAY_HELP = """\
Run the public gateway. Settings come from the environment (README, "Configuration").

required:
  DATABASE_URL              PostgreSQL, the gateway's role (postgresql://tokengate_gateway@...)
  REDIS_URL                 Redis (redis://, rediss://, unix://, redis+sentinel://)
  BACKEND_URL               the identity service's internal base URL (http:// or https://)
  JWT_ACCESS_SECRET         HS256 secret for access tokens, >= 32 bytes (or *_FILE)
  JWT_REFRESH_SECRET        HS256 secret for refresh tokens, >= 32 bytes, another one (or *_FILE)
  INTERNAL_JWT_PRIVATE_KEY  Ed25519 private key, PEM (or *_FILE); the backend holds its public key

often set (default):
  GATEWAY_ID (tokengate-gateway), BACKEND_ID (tokengate-backend), CORS_ALLOWED_ORIGINS (none),
  PUBLIC_ORIGIN (none: DPoP off), COOKIE_SECURE (true), TRUSTED_PROXIES (none),
  ACCESS_TOKEN_TTL (600), REFRESH_TOKEN_TTL (1209600), LOGIN_RATE_LIMIT_IP (10/minute),
  LOGIN_RATE_LIMIT_ACCOUNT (5/minute), METRICS_PORT (off), LOG_LEVEL (INFO), LOG_FORMAT (json)

`tokengate keys generate` prints a key pair and both secrets as .env lines."""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    run = server_parser(
        sub,
        "gateway",
        summary="run the gateway (public HTTP server)",
        description=GATEWAY_HELP,
        port=8000,
    )
    run.set_defaults(func=_run_gateway)

    sessions = sub.add_parser("sessions", help="list or revoke users' login sessions")
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="a user's live sessions")
    _user_args(listing, required=True)
    listing.set_defaults(func=_list)
    revoke = actions.add_parser("revoke", help="revoke a user's sessions or one family")
    group = _user_args(revoke, required=True)
    group.add_argument("--family", help="one session (family) id")
    revoke.set_defaults(func=_revoke)

    ledger = sub.add_parser("ledger", help="maintain the refresh-family ledger")
    ledger_actions = ledger.add_subparsers(dest="action", required=True, metavar="ACTION")
    prune = ledger_actions.add_parser(
        "prune",
        help="delete families that ended (revoked or past their lifetime) before the retention",
    )
    prune.add_argument(
        "--retention",
        type=int,
        help="seconds an ended family is kept (default: REFRESH_LEDGER_RETENTION)",
    )
    prune.add_argument("--batch-size", type=int, default=PRUNE_BATCH, help="rows per transaction")
    prune.set_defaults(func=_prune)


def _user_args(parser: argparse.ArgumentParser, *, required: bool) -> Any:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--email", help="resolved to a user id via BACKEND_DATABASE_URL")
    group.add_argument("--user-id", help="the user's id (uuid)")
    return group


def app_from_env() -> Any:
    """The gateway app, settings from the environment (each worker calls this)."""
    from servicekit.logs import configure_logging

    from gateway.app import create_app

    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise walk the whole heap. Per-request objects are freed by
    # reference counting; a larger first threshold runs the cycle collector less often on the
    # hot path (about every hundred requests rather than every few), at the cost of holding
    # cyclic garbage a little longer.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, *gc.get_threshold()[1:])
    return app


def _run_gateway(args: argparse.Namespace) -> int:
    from servicekit.logs import configure_logging
    from servicekit.metrics import MetricsSettings
    from servicekit.serve import check_workers, serve

    from gateway import metrics as gateway_metrics
    from gateway.app import create_app
    from gateway.signing import start_internal_listener

    # Everything is validated here, once, before any worker starts: the settings, the keys
    # and the metrics listener's address, every problem of them all named in one run.
    problems = Problems()
    problems.take(lambda: check_workers(args.workers), 1)
    settings = problems.take(lambda: Settings.from_env(os.environ), None)
    metrics = problems.take(lambda: MetricsSettings.from_env(os.environ), MetricsSettings())
    problems.check()
    assert settings is not None  # check() raised otherwise
    configure_logging(settings.log_level, settings.log_format)
    # (spans are set up by the app that serves, not by this check)
    create_app(dataclasses.replace(settings, otel_endpoint=None))
    # proxy_headers off: the client IP is decided by TRUSTED_PROXIES in gateway.auth.ratelimit,
    # never by a header uvicorn would trust on its own.
    # The published key set: one listener per gateway, here in the parent (never a worker, never
    # the public port), like the metrics listener.
    listener = start_internal_listener(settings)
    try:
        return serve(
            "gateway.cli:app_from_env",
            host=args.host,
            port=args.port,
            workers=args.workers,
            metrics=metrics,
            limits=settings.connections,
            # the backend pool (proxy/backend.py: 256), PostgreSQL, Redis and its pub/sub
            pooled=256 + settings.pool.max_size + 8,
            registry=gateway_metrics.REGISTRY,
            proxy_headers=False,
        )
    finally:
        if listener is not None:
            listener.stop()


async def _resolve_user(settings: OperatorSettings, args: argparse.Namespace) -> str:
    return await resolve_user_id(settings.users_database_url, args.email, args.user_id)


async def resolve_user_id(users_database_url: str, email: str | None, user_id: str | None) -> str:
    """``--user-id`` checked, or ``--email`` looked up through a DSN that may read users
    (``tokengate sessions`` and ``tokengate audit query``)."""
    if user_id:
        try:
            return str(uuid.UUID(user_id))
        except ValueError:
            raise ConfigError(f"--user-id '{printable(user_id)}' is not a uuid") from None
    try:
        conn = await asyncpg.connect(users_database_url)
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
        raise Unavailable(
            f"cannot reach BACKEND_DATABASE_URL (or DATABASE_URL) to resolve --email "
            f"({type(exc).__name__}); retry, or use --user-id"
        ) from None
    try:
        # the one normal form the backend stores and looks users up by (servicekit.emails):
        # ' DEMO@example.test ' and a fullwidth spelling are the same account there, so here too
        found = await conn.fetchval(
            "SELECT id FROM users WHERE email_normal = $1", normalise_email(email or "")
        )
    except asyncpg.InsufficientPrivilegeError:
        raise PermissionDenied(
            "the role in DATABASE_URL may not read users (the gateway's may not, by design); "
            "set BACKEND_DATABASE_URL to the backend's role (tokengate_backend) to resolve "
            "--email, or use --user-id"
        ) from None
    finally:
        await conn.close()
    if found is None:
        raise NotFound(f"no user with email '{printable(email or '')}'")
    return str(found)


async def _audit_operator_revoke(pool: asyncpg.Pool, user_id: str | None, sids: list[str]) -> None:
    """``session_revoked`` by the operator, on this command's own chain. Written right after
    the ledger's revocation (not in its transaction): a failure here exits non-zero, the
    revocation itself stands (it is the safe direction)."""
    if user_id is None and len(sids) == 1:
        owner = await pool.fetchval(
            "SELECT user_id FROM refresh_session WHERE family_id = $1", uuid.UUID(sids[0])
        )
        user_id = str(owner) if owner is not None else None
    item = Event.make(
        "session_revoked",
        "success",
        actor="operator",
        subject=user_id,
        family=sids[0] if len(sids) == 1 else None,
        details={"by": "operator", "count": len(sids)},
    )
    async with pool.acquire() as conn, conn.transaction():
        await append(conn, writer_id("gateway", f"cli-{os.getpid()}"), [item])


async def _with_ledger(settings: OperatorSettings) -> tuple[asyncpg.Pool, Ledger]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    # grace/ttl are irrelevant to listing and revoking
    return pool, Ledger(pool, refresh_ttl=1, family_lifetime=1, grace_seconds=0)


def _list(args: argparse.Namespace) -> int:
    settings = OperatorSettings.from_env(os.environ)

    async def main() -> int:
        user_id = await _resolve_user(settings, args)
        pool, ledger = await _with_ledger(settings)
        try:
            sessions = await ledger.list_sessions(user_id, now=int(time.time()))
        finally:
            await pool.close()
        print(f"{'id':36}  {'created':25}  {'last used':25}  {'ip':15}  user agent")
        for s in sessions:
            # the User-Agent (and, behind a proxy, the address) is whatever the client sent:
            # escaped, or its control characters would act on the operator's terminal
            print(
                f"{s.id:36}  {s.created_at.isoformat(timespec='seconds'):25}  "
                f"{s.last_used_at.isoformat(timespec='seconds'):25}  "
                f"{printable(s.ip or '-'):15}  {printable((s.user_agent or '-')[:60])}"
            )
        return 0

    return asyncio.run(main())


def _revoke(args: argparse.Namespace) -> int:
    settings = OperatorSettings.from_env(os.environ)

    async def main() -> int:
        pool, ledger = await _with_ledger(settings)
        now = int(time.time())
        try:
            user_id: str | None = None
            if args.family:
                try:
                    sid = str(uuid.UUID(args.family))
                except ValueError:
                    raise ConfigError(
                        f"--family '{printable(args.family)}' is not a uuid"
                    ) from None
                sids = await ledger.revoke_families([sid], reason="operator", now=now)
                if not sids and not await ledger.family_exists(sid):
                    raise NotFound(f"no session (family) {sid}")
            else:
                user_id = await _resolve_user(settings, args)
                sids = await ledger.revoke_all_for_user(user_id, reason="operator", now=now)
            if sids:
                await _audit_operator_revoke(pool, user_id, sids)
        finally:
            await pool.close()
        print(f"revoked {len(sids)} session(s)")
        if not sids:
            return 0
        problem = await _publish(settings, sids)
        if problem is not None:
            # Stored, so refresh is blocked now; only live access tokens wait (up to their TTL)
            raise Unavailable(
                f"revoked in the ledger but not broadcast ({problem}): refresh is blocked now, "
                "live access tokens end within ACCESS_TOKEN_TTL; re-run when Redis is back to "
                "end them at once"
            )
        return 0

    return asyncio.run(main())


async def _publish(settings: OperatorSettings, sids: list[str]) -> str | None:
    """Broadcast ``sids`` to every gateway; why not, or ``None`` when sent."""
    if settings.redis is None:
        return "REDIS_URL is not set"
    client = redis_url.async_client(settings.redis, socket_connect_timeout=2.0, socket_timeout=2.0)
    revoked = RevokedSessions(
        client, prefix=settings.redis_key_prefix, ttl=settings.access_token_ttl
    )
    try:
        await revoked.revoke(sids)
        return "Redis unreachable" if revoked.pending else None
    finally:
        await client.aclose()


def _prune(args: argparse.Namespace) -> int:
    settings = PruneSettings.from_env(os.environ)
    retention = settings.retention if args.retention is None else args.retention
    if retention < settings.access_token_ttl:
        # a revoked family must outlive its access tokens (revocation-set rebuild)
        raise ConfigError(
            f"--retention must be at least ACCESS_TOKEN_TTL ({settings.access_token_ttl} s)"
        )
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")

    async def main() -> int:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
        try:
            ledger = Ledger(pool, refresh_ttl=1, family_lifetime=1, grace_seconds=0)
            report = await ledger.prune(
                retention=retention, now=int(time.time()), batch_size=args.batch_size
            )
        finally:
            await pool.close()
        print(
            f"pruned {report.deleted} ended famil{'y' if report.deleted == 1 else 'ies'}"
            f" in {report.batches} batch(es), {report.seconds:.2f} s"
        )
        if report.contended:
            print("another prune holds the lock; it carries on with the rest", file=sys.stderr)
        return 0

    return asyncio.run(main())
