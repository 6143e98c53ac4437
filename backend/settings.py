"""The backend's settings, read from the environment in one place and validated at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from internal_auth import KeyLoadError, KeySet, load_public_keys
from internal_auth.replay import DEFAULT_MAX_ENTRIES
from servicekit import config, otel, pg_url
from servicekit.bodies import DEFAULT_BODY_TIMEOUT
from servicekit.config import ConfigError
from servicekit.connections import BACKEND_DEFAULTS, ConnectionLimits
from servicekit.db import PoolSettings
from servicekit.logs import log_format_from_env, log_level_from_env

from backend.passwords import Argon2Params, default_max_concurrent, params_from_env


@dataclass(frozen=True)
class Settings:
    database_url: str
    public_keys: KeySet
    gateway_id: str = "tokengate-gateway"
    backend_id: str = "tokengate-backend"
    leeway: int = 5
    # Live internal-token jti values remembered for single use; 0 turns single use off.
    replay_cache_size: int = DEFAULT_MAX_ENTRIES
    pool: PoolSettings = field(default_factory=PoolSettings)
    #: head size, fields, head time, keep-alive and the connection cap (servicekit.connections)
    connections: ConnectionLimits = BACKEND_DEFAULTS
    log_level: str = "INFO"
    log_format: str = "json"
    otel_endpoint: str | None = None
    argon2: Argon2Params = field(default_factory=Argon2Params)
    argon2_max_concurrent: int = field(default_factory=default_max_concurrent)
    #: the gateway's published key set (INTERNAL_JWKS_URL); None: the pinned keys only
    jwks_url: str | None = None
    #: seconds between scheduled fetches; None: the answer's Cache-Control max-age
    jwks_refresh_interval: float | None = None
    #: at most one fetch for unknown kids per this many seconds
    jwks_cooldown: float = 5.0
    #: the CA of an https:// key set URL (the system store is never used)
    jwks_ca_file: str | None = None
    #: seconds a request body may pause between two pieces (408 beyond)
    body_read_timeout: float = DEFAULT_BODY_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every variable, validated; a :class:`ConfigError` names **all** that are wrong."""
        env = config.environ() if environ is None else environ
        p = config.Problems()
        take = p.take
        keys = take(lambda: _public_keys(env), None)
        jwks_url = env.get("INTERNAL_JWKS_URL", "").strip() or None
        jwks_ca_file = env.get("INTERNAL_JWKS_CA_FILE", "").strip() or None
        take(lambda: _check_jwks_url(jwks_url, jwks_ca_file), None)
        refresh = env.get("INTERNAL_JWKS_REFRESH_INTERVAL", "").strip()
        settings = cls(
            jwks_url=jwks_url,
            jwks_ca_file=jwks_ca_file,
            jwks_refresh_interval=take(
                lambda: (
                    config.get_float(env, "INTERNAL_JWKS_REFRESH_INTERVAL", 300.0, minimum=0.1)
                    if refresh
                    else None
                ),
                None,
            ),
            jwks_cooldown=take(
                lambda: config.get_float(env, "INTERNAL_JWKS_COOLDOWN", 5.0, minimum=0.1), 5.0
            ),
            database_url=take(lambda: pg_url.checked(config.get_str(env, "DATABASE_URL")), ""),
            # None only when p.check() below raises: the object never leaves this method
            public_keys=keys,  # type: ignore[arg-type]
            gateway_id=take(lambda: config.get_str(env, "GATEWAY_ID", "tokengate-gateway"), ""),
            backend_id=take(lambda: config.get_str(env, "BACKEND_ID", "tokengate-backend"), ""),
            leeway=take(lambda: config.get_int(env, "INTERNAL_TOKEN_LEEWAY", 5), 5),
            replay_cache_size=take(
                lambda: config.get_int(
                    env, "INTERNAL_TOKEN_REPLAY_CACHE_SIZE", DEFAULT_MAX_ENTRIES, minimum=0
                ),
                0,
            ),
            pool=take(lambda: PoolSettings.from_env(env), PoolSettings()),
            connections=take(
                lambda: ConnectionLimits.from_env(env, defaults=BACKEND_DEFAULTS), BACKEND_DEFAULTS
            ),
            log_level=take(lambda: log_level_from_env(env), "INFO"),
            log_format=take(lambda: log_format_from_env(env), "json"),
            otel_endpoint=take(lambda: otel.endpoint_from_env(env), None),
            argon2=take(lambda: params_from_env(env), Argon2Params()),
            argon2_max_concurrent=take(
                lambda: config.get_int(
                    env, "ARGON2_MAX_CONCURRENT", default_max_concurrent(), minimum=1
                ),
                1,
            ),
            body_read_timeout=config.get_seconds(env, "BODY_READ_TIMEOUT", DEFAULT_BODY_TIMEOUT),
        )
        p.check()
        return settings


def _public_keys(env: Mapping[str, str]) -> KeySet:
    raw_keys = config.env_or_file(env, "INTERNAL_JWT_PUBLIC_KEY")
    try:
        return load_public_keys(raw_keys)
    except KeyLoadError as exc:
        # The backend must never hold signing material; load_public_keys refuses it.
        raise ConfigError(f"INTERNAL_JWT_PUBLIC_KEY: {exc}") from None


def _check_jwks_url(url: str | None, ca_file: str | None) -> None:
    if url is None:
        if ca_file is not None:
            raise ConfigError("INTERNAL_JWKS_CA_FILE is set but INTERNAL_JWKS_URL is not")
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("INTERNAL_JWKS_URL must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("INTERNAL_JWKS_URL must carry no credentials, query or fragment")
    if parts.scheme == "http" and not parts.path.endswith(".json"):
        raise ConfigError(
            "INTERNAL_JWKS_URL over http:// must name the .../jwks.json document (its signed "
            "copy .../jwks.jws beside it is what is fetched and checked)"
        )
    if parts.scheme == "https" and ca_file is None:
        raise ConfigError(
            "INTERNAL_JWKS_URL is https:// but INTERNAL_JWKS_CA_FILE is not set (the system "
            "store is never used for the internal network)"
        )
