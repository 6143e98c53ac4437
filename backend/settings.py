"""The backend's settings, read from the environment in one place and validated at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from internal_auth import KeyLoadError, KeySet, load_public_keys
from internal_auth.replay import DEFAULT_MAX_ENTRIES
from servicekit import config, otel
from servicekit.config import ConfigError
from servicekit.db import PoolSettings
from servicekit.logs import log_format_from_env

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
    log_level: str = "INFO"
    log_format: str = "json"
    otel_endpoint: str | None = None
    argon2: Argon2Params = field(default_factory=Argon2Params)
    argon2_max_concurrent: int = field(default_factory=default_max_concurrent)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = config.environ() if environ is None else environ
        raw_keys = config.env_or_file(env, "INTERNAL_JWT_PUBLIC_KEY")
        try:
            keys = load_public_keys(raw_keys)
        except KeyLoadError as exc:
            # The backend must never hold signing material; load_public_keys refuses it.
            raise ConfigError(f"INTERNAL_JWT_PUBLIC_KEY: {exc}") from None
        return cls(
            database_url=config.get_str(env, "DATABASE_URL"),
            public_keys=keys,
            gateway_id=config.get_str(env, "GATEWAY_ID", "tokengate-gateway"),
            backend_id=config.get_str(env, "BACKEND_ID", "tokengate-backend"),
            leeway=config.get_int(env, "INTERNAL_TOKEN_LEEWAY", 5),
            replay_cache_size=config.get_int(
                env, "INTERNAL_TOKEN_REPLAY_CACHE_SIZE", DEFAULT_MAX_ENTRIES, minimum=0
            ),
            pool=PoolSettings.from_env(env),
            log_level=config.get_str(env, "LOG_LEVEL", "INFO"),
            log_format=log_format_from_env(env),
            otel_endpoint=otel.endpoint_from_env(env),
            argon2=params_from_env(env),
            argon2_max_concurrent=config.get_int(
                env, "ARGON2_MAX_CONCURRENT", default_max_concurrent(), minimum=1
            ),
        )
