"""The gateway's ``app.state``, typed: :class:`GatewayState` and the accessors that hand it out.

:class:`GatewayState` declares each attribute with its type (see :mod:`servicekit.state`),
``create_app`` installs it, and :func:`gateway_state` / :func:`scope_state` narrow ``app.state``
to it once, where a request starts using it.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from internal_auth import KeyHolder, Minter
from servicekit import db
from servicekit.audit import BatchWriter
from servicekit.state import TypedState, app_state
from starlette.requests import HTTPConnection
from starlette.types import Scope

from gateway.auth.backend_client import BackendClient
from gateway.auth.ratelimit import RateLimits
from gateway.auth.tokens import TokenService
from gateway.dpop import DPoP
from gateway.policy.reload import PolicyReloader
from gateway.proxy.backend import BackendProxy
from gateway.sessions.epochs import UserEpochs
from gateway.sessions.ledger import Ledger
from gateway.sessions.pruner import LedgerPruner
from gateway.sessions.revocation import RevokedSessions
from gateway.settings import Settings


class GatewayState(TypedState):
    """What the gateway keeps on ``app.state``.

    ``create_app`` sets ``settings``, ``tokens``, ``minter``, ``signing_keys`` and
    ``db_outages``; everything else is opened in the lifespan and exists only after start-up
    (reading it before raises ``AttributeError``, as Starlette's ``State`` does).
    """

    settings: Settings
    #: ``verify_access``/``issue_access`` and the refresh-token codec
    tokens: TokenService
    #: internal tokens: issuer GATEWAY_ID, audience BACKEND_ID
    minter: Minter
    #: the signing keys every minter signs with, re-read from the key file (gateway.signing)
    signing_keys: KeyHolder
    #: the database-outage 503 handler (:func:`servicekit.db.exception_handlers`) counts here
    db_outages: db.Outages

    # --- after start-up only ------------------------------------------------------------------
    pool: db.Database
    redis: aioredis.Redis
    #: ``sid in revoked``, no I/O
    revoked: RevokedSessions
    #: ``token_denied(sub, iat)``, no I/O
    epochs: UserEpochs
    ledger: Ledger
    backend: BackendClient
    ratelimits: RateLimits
    #: proof checks and the shared ``jti`` replay cache
    dpop: DPoP
    #: the keep-alive pool to the backend that :func:`gateway.proxy.handler.proxy_request` forwards
    #: on
    proxy: BackendProxy
    #: watches GATEWAY_CONFIG and swaps ``proxy.policy`` (``None`` without the file)
    policy_reloader: PolicyReloader | None
    pruner: LedgerPruner
    #: the audit trail's background writer; None with AUDIT_ENABLED=false
    audit: BatchWriter | None


def scope_state(scope: Scope) -> GatewayState:
    """The state of the gateway app serving this ASGI ``scope``."""
    return app_state(scope, GatewayState)


def gateway_state(conn: HTTPConnection) -> GatewayState:
    """The state of the gateway app serving this request."""
    return scope_state(conn.scope)
