"""The gateway's settings: read from the environment in one place, validated at start-up.

Every failure names the variable, so an operator sees ``JWT_REFRESH_SECRET must be at least 32
bytes`` rather than a stack trace from the first request.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from internal_auth import KeyLoadError, SigningKeys
from limits import parse as parse_limit
from servicekit import otel, pg_url
from servicekit import redis_url as redis_urls
from servicekit.audit import derive_hmac_key
from servicekit.config import (
    ConfigError,
    Problems,
    env_or_file,
    get_bool,
    get_float,
    get_int,
    get_list,
    get_seconds,
    get_str,
)
from servicekit.connections import ConnectionLimits
from servicekit.db import PoolSettings
from servicekit.forwarded import Network
from servicekit.logs import log_format_from_env, log_level_from_env

from gateway.policy import DEFAULT_MAX_BYTES, Policy, load_policy
from gateway.proxy.tls import TLSFileError, client_context
from gateway.proxy.upstream import Origin

# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_SECRET_BYTES = 32

#: 7 days: an ended family's row outlives every access token of it (revocation-set rebuild), and
#: stays queryable for a week of incident follow-up; the audit log keeps the rest for longer.
DEFAULT_LEDGER_RETENTION = 604800


def ledger_retention(environ: Mapping[str, str], access_ttl: int) -> int:
    """``REFRESH_LEDGER_RETENTION``, never shorter than an access token's life.

    Pruning a revoked family before its last access token expires would drop it from the
    revocation set a gateway rebuilds from the ledger after Redis lost it.
    """
    retention = get_int(environ, "REFRESH_LEDGER_RETENTION", DEFAULT_LEDGER_RETENTION, minimum=0)
    if retention < access_ttl:
        raise ConfigError(
            f"REFRESH_LEDGER_RETENTION must be at least ACCESS_TOKEN_TTL ({access_ttl} s)"
        )
    return retention


def _secret(environ: Mapping[str, str], name: str, *, required: bool) -> str | None:
    value = env_or_file(environ, name, required=required)
    if value is None:
        return None
    if len(value.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes long")
    return value


#: The backend's largest page of ``/internal/lifecycle/epochs`` (``backend.app.EPOCHS_PAGE_MAX``).
EPOCH_PAGE_MAX = 10_000


def _epoch_page_size(environ: Mapping[str, str]) -> int:
    size = get_int(environ, "EPOCH_RELOAD_PAGE_SIZE", 1000, minimum=1)
    if size > EPOCH_PAGE_MAX:
        raise ConfigError(f"EPOCH_RELOAD_PAGE_SIZE must be at most {EPOCH_PAGE_MAX}, got {size}")
    return size


def _rate(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name, default).strip()
    if not value:
        return ""
    try:
        parse_limit(value)
    except ValueError:
        raise ConfigError(f"{name} must be a rate like '10/minute', got {value!r}") from None
    return value


def _networks(environ: Mapping[str, str], name: str) -> tuple[Network, ...]:
    out: list[Network] = []
    for item in get_list(environ, name):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP address or CIDR") from None
    return tuple(out)


def _origins(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = get_list(environ, name)
    for origin in origins:
        # A wildcard with credentials would let any site read authenticated responses; the
        # CORS spec forbids it and browsers would refuse it anyway (Fetch §3.2.5).
        if origin == "*" or "*" in origin:
            raise ConfigError(f"{name} must list explicit origins; '*' is not allowed")
        if not origin.startswith(("http://", "https://")) or origin.endswith("/"):
            raise ConfigError(
                f"{name}: {origin!r} must be scheme://host[:port] with no path or trailing slash"
            )
    return origins


def _public_origins(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """The origins clients use to reach this gateway: the ``htu`` of a DPoP proof must name one
    (RFC 9449 §4.3). Lower-cased and without a default port, the form proofs are compared in."""
    out: list[str] = []
    for origin in get_list(environ, name):
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise ConfigError(
                f"{name}: {origin!r} must be scheme://host[:port] with no path or trailing slash"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"{name}: {origin!r} has an invalid port") from None
        host = parts.hostname.lower()
        if ":" in host:
            host = f"[{host}]"
        default = {"http": 80, "https": 443}[parts.scheme]
        out.append(f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else ""))
    return tuple(out)


_SINGLE_KEY = ("INTERNAL_JWT_PRIVATE_KEY", "INTERNAL_JWT_PRIVATE_KEY_FILE")
_KEY_BUNDLE = ("INTERNAL_JWT_PRIVATE_KEYS", "INTERNAL_JWT_PRIVATE_KEYS_FILE")


def _signing_keys(environ: Mapping[str, str]) -> tuple[str, str | None]:
    """The signing keys' text (one PEM key or a key file, docs/SECURITY.md) and the path to
    re-read, if they came from a file."""
    single = [name for name in _SINGLE_KEY if environ.get(name)]
    bundle = [name for name in _KEY_BUNDLE if environ.get(name)]
    if single and bundle:
        raise ConfigError(
            f"{' and '.join(single)} and {' and '.join(bundle)} are both set: give the signing "
            "key once, either as one key (INTERNAL_JWT_PRIVATE_KEY[_FILE]) or as a key file "
            "(INTERNAL_JWT_PRIVATE_KEYS[_FILE])"
        )
    name = "INTERNAL_JWT_PRIVATE_KEYS" if bundle else "INTERNAL_JWT_PRIVATE_KEY"
    text = env_or_file(environ, name, required=True)
    path = environ.get(f"{name}_FILE") or None
    # parsed here too, so a bad key is one more line of the start-up report rather than a
    # second run's error (the holder parses it again in create_app)
    try:
        SigningKeys.parse(text)
    except KeyLoadError as exc:
        shown = f"{name}_FILE" if path else name
        raise ConfigError(f"{shown}: not a valid Ed25519 key or key file ({exc.message})") from None
    return text, path


def _port(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    port = get_int(environ, name, 0, minimum=1)
    if port > 65535:
        raise ConfigError(f"{name} must be a port number from 1 to 65535, got {port}")
    return port


def _backend_tls(
    environ: Mapping[str, str], https: bool
) -> tuple[str | None, str | None, str | None]:
    """``BACKEND_CA_FILE``, ``BACKEND_CLIENT_CERT_FILE``, ``BACKEND_CLIENT_KEY_FILE``: checked
    against the URL's scheme and loaded once, so a bad file stops the start, named."""
    ca_file = environ.get("BACKEND_CA_FILE") or None
    cert_file = environ.get("BACKEND_CLIENT_CERT_FILE") or None
    key_file = environ.get("BACKEND_CLIENT_KEY_FILE") or None
    given = [
        name
        for name, value in (
            ("BACKEND_CA_FILE", ca_file),
            ("BACKEND_CLIENT_CERT_FILE", cert_file),
            ("BACKEND_CLIENT_KEY_FILE", key_file),
        )
        if value
    ]
    if not https:
        if given:
            # fail closed: TLS files with an http:// URL mean the operator believes the hop is
            # encrypted while passwords cross it in the clear
            raise ConfigError(f"{', '.join(given)} set but BACKEND_URL is not https://")
        return None, None, None
    if ca_file is None:
        # the hop never trusts the system store: any public CA could issue the backend's name
        raise ConfigError("BACKEND_URL is https:// but BACKEND_CA_FILE is not set")
    if key_file is not None and cert_file is None:
        raise ConfigError("BACKEND_CLIENT_KEY_FILE is set without BACKEND_CLIENT_CERT_FILE")
    try:
        client_context(ca_file, cert_file, key_file)
    except TLSFileError as exc:
        names = {
            "CA file": "BACKEND_CA_FILE",
            "client key": "BACKEND_CLIENT_KEY_FILE",
        }.get(exc.which, "BACKEND_CLIENT_CERT_FILE/BACKEND_CLIENT_KEY_FILE")
        raise ConfigError(f"{names}: {exc}") from None
    return ca_file, cert_file, key_file


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    backend_url: str
    jwt_access_secret: str = field(repr=False)
    jwt_refresh_secret: str = field(repr=False)
    internal_jwt_private_key: str = field(repr=False)
    jwt_access_secret_previous: str | None = field(default=None, repr=False)
    jwt_refresh_secret_previous: str | None = field(default=None, repr=False)
    redis_key_prefix: str = "tokengate:"
    gateway_id: str = "tokengate-gateway"
    backend_id: str = "tokengate-backend"
    access_token_audience: str = "tokengate-api"
    access_token_ttl: int = 600
    refresh_token_ttl: int = 1209600
    refresh_family_lifetime: int = 2592000
    refresh_grace_seconds: int = 10
    #: seconds an ended family (revoked, or past its absolute lifetime) stays in the ledger
    refresh_ledger_retention: int = DEFAULT_LEDGER_RETENTION
    #: seconds between the gateway's own prune passes (0: only ``tokengate ledger prune``)
    refresh_ledger_prune_interval: int = 3600
    internal_token_ttl: int = 30
    #: the key file the gateway re-reads (INTERNAL_JWT_PRIVATE_KEY[S]_FILE); None: keys from
    #: the environment, fixed for the process's life
    internal_jwt_private_keys_file: str | None = None
    #: seconds between two reads of the key file and of GATEWAY_CONFIG by every worker
    #: (GATEWAY_CONFIG_RELOAD_INTERVAL)
    gateway_config_reload_interval: float = 5.0
    #: the internal listener of the published key set (off unless a port is set)
    internal_listen_host: str = "127.0.0.1"
    internal_listen_port: int | None = None
    internal_jwks_max_age: int = 300
    #: a certificate and key for the internal listener (plain HTTP without them)
    internal_listen_cert_file: str | None = None
    internal_listen_key_file: str | None = None
    cors_allowed_origins: tuple[str, ...] = ()
    cookie_secure: bool = True
    trusted_proxies: tuple[Network, ...] = ()
    login_rate_limit_ip: str = "10/minute"
    login_rate_limit_account: str = "5/minute"
    refresh_rate_limit: str = "30/minute"
    proxy_rate_limit_user: str = ""
    #: anonymous requests (admitted by a policy's public rules) per client IP; "" is off
    proxy_rate_limit_ip: str = "120/minute"
    #: ``GATEWAY_CONFIG``: the route table and policy, compiled (``None``: one service, any
    #: authenticated user, from ``BACKEND_URL``/``BACKEND_ID``)
    gateway_config: str | None = None
    gateway_config_max_bytes: int = DEFAULT_MAX_BYTES
    policy: Policy | None = field(default=None, repr=False, compare=False)
    proxy_max_body_bytes: int = 20971520
    proxy_connect_timeout: float = 2.0
    proxy_read_timeout: float = 30.0
    # the hop's TLS (https:// BACKEND_URL): the service's CA, and the gateway's client
    # certificate for mutual TLS; paths, read again by each worker
    backend_ca_file: str | None = None
    backend_client_cert_file: str | None = None
    backend_client_key_file: str | None = None
    #: the backend pool: connections per worker, seconds an idle one is kept (below the
    #: backend's own keep-alive, see README "The backend pool"), seconds to wait for a free one
    proxy_pool_size: int = 256
    proxy_pool_keepalive: float = 4.0
    proxy_pool_timeout: float = 5.0
    #: the backend's answer: bytes of head (interim heads included), interim (1xx) answers
    proxy_backend_max_head_bytes: int = 65536
    proxy_backend_max_interim: int = 8
    #: seconds a client may leave between two pieces of its request body (408 beyond)
    body_read_timeout: float = 10.0
    #: bodies up to this size are read whole before a backend connection is taken
    proxy_buffer_bytes: int = 262144
    #: unfinished uploads (bodies beyond ``proxy_buffer_bytes``) holding a backend connection:
    #: in all (per worker), per user and per client address
    proxy_uploads_max: int = 64
    proxy_uploads_per_user: int = 4
    proxy_uploads_per_ip: int = 16
    epoch_reload_interval: float = 30.0
    epoch_reload_page_size: int = 1000
    log_level: str = "INFO"
    log_format: str = "json"
    otel_endpoint: str | None = None
    pool: PoolSettings = field(default_factory=PoolSettings)
    #: head size, fields, head time, keep-alive and the connection cap (servicekit.connections)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    # DPoP (RFC 9449): empty public_origins disables it (proofs are refused, fail closed).
    public_origins: tuple[str, ...] = ()
    dpop_iat_window: int = 60
    dpop_nonce_required: bool = False
    dpop_nonce_rotation: int = 300
    dpop_nonce_secret: str | None = field(default=None, repr=False)
    #: the sentinels' own password (``REDIS_SENTINEL_PASSWORD``), never the master's
    redis_sentinel_password: str | None = field(default=None, repr=False)
    # The audit trail (docs/AUDIT.md): events queued in memory, written in batches.
    audit_enabled: bool = True
    #: events waiting to be written; over it an event is dropped and counted
    audit_queue_size: int = 10_000
    #: events per INSERT transaction
    audit_batch_size: int = 500
    #: seconds between two flushes (at most 1: an event is queryable within a second)
    audit_flush_interval: float = 0.25
    #: the most events one page of the audit API returns
    audit_query_max_limit: int = 200
    #: AUDIT_HMAC_KEY[_FILE]; unset: derived from JWT_REFRESH_SECRET (audit_hmac_key)
    audit_hmac_secret: str | None = field(default=None, repr=False)

    @functools.cached_property
    def audit_hmac_key(self) -> bytes:
        """The key of the emails that matched no account in the audit trail: AUDIT_HMAC_KEY, or
        derived one-way from the refresh secret (no new required variable; rotating that secret
        only stops new hashes from matching old ones)."""
        return derive_hmac_key(self.audit_hmac_secret or self.jwt_refresh_secret)

    @property
    def redis(self) -> redis_urls.RedisTarget:
        """``REDIS_URL`` parsed (validated at start-up by :meth:`from_env`)."""
        return redis_urls.parse(self.redis_url, sentinel_password=self.redis_sentinel_password)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Every variable, validated; a :class:`ConfigError` names **all** that are wrong."""
        p = Problems()
        take = p.take
        access = take(lambda: _secret(environ, "JWT_ACCESS_SECRET", required=True), None)
        refresh = take(lambda: _secret(environ, "JWT_REFRESH_SECRET", required=True), None)
        access_prev = take(
            lambda: _secret(environ, "JWT_ACCESS_SECRET_PREVIOUS", required=False), None
        )
        refresh_prev = take(
            lambda: _secret(environ, "JWT_REFRESH_SECRET_PREVIOUS", required=False), None
        )
        # One secret for both types would let a refresh token be replayed as an access token
        # if any verifier ever forgot the typ check (RFC 8725 §2.8, §3.11).
        access_all = {access, access_prev} - {None}
        refresh_all = {refresh, refresh_prev} - {None}
        if access_all & refresh_all:
            p.messages.append(
                "JWT_ACCESS_SECRET and JWT_REFRESH_SECRET (and their _PREVIOUS values) "
                "must all be different"
            )
        no_keys: tuple[str, str | None] = ("", None)
        private_key, keys_file = take(lambda: _signing_keys(environ), no_keys)
        cert_file = environ.get("INTERNAL_LISTEN_CERT_FILE", "").strip() or None
        key_file = environ.get("INTERNAL_LISTEN_KEY_FILE", "").strip() or None
        if (cert_file is None) != (key_file is None):
            p.messages.append(
                "INTERNAL_LISTEN_CERT_FILE and INTERNAL_LISTEN_KEY_FILE go together: set both or "
                "neither"
            )
        prefix = environ.get("REDIS_KEY_PREFIX", "tokengate:")
        if not prefix:
            p.messages.append("REDIS_KEY_PREFIX must not be empty")
        access_ttl = take(lambda: get_int(environ, "ACCESS_TOKEN_TTL", 600, minimum=1), 600)
        refresh_ttl = take(
            lambda: get_int(environ, "REFRESH_TOKEN_TTL", 1209600, minimum=1), 1209600
        )
        level = take(lambda: log_level_from_env(environ), "INFO")
        internal_ttl = take(lambda: _at_most(environ, "INTERNAL_TOKEN_TTL", 30, 60), 30)
        config_path = environ.get("GATEWAY_CONFIG", "").strip() or None
        config_max = take(
            lambda: get_int(environ, "GATEWAY_CONFIG_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=1),
            DEFAULT_MAX_BYTES,
        )
        policy = None
        ca_file = cert_file = key_file = None
        backend_url, backend_id = "", ""
        if config_path is not None:
            # The identity service of the file takes the place of BACKEND_URL and BACKEND_ID:
            # the gateway's own calls (credentials, lifecycle, readiness) go to it alone, over
            # its own TLS files (the file's ca_file, client_cert_file, client_key_file).
            policy = take(lambda: load_policy(config_path, max_bytes=config_max), None)
            if policy is not None:
                identity = policy.services[policy.identity]
                backend_url, backend_id = identity.url, identity.audience
        else:
            backend_url = take(lambda: _backend_url(environ), "")
            backend_id = take(lambda: get_str(environ, "BACKEND_ID", "tokengate-backend"), "")
            if backend_url:
                no_tls: tuple[str | None, str | None, str | None] = (None, None, None)
                ca_file, cert_file, key_file = take(
                    lambda: _backend_tls(environ, Origin(backend_url).tls), no_tls
                )
        pool_size = take(lambda: get_int(environ, "PROXY_POOL_SIZE", 256, minimum=1), 256)
        uploads_max = take(lambda: get_int(environ, "PROXY_UPLOADS_MAX", 64, minimum=1), 1)
        if uploads_max >= pool_size:
            # uploads must leave connections free, or bodiless requests wait behind them
            p.messages.append(
                f"PROXY_UPLOADS_MAX ({uploads_max}) must be below PROXY_POOL_SIZE ({pool_size})"
            )
        iat_window = take(lambda: _at_most(environ, "DPOP_IAT_WINDOW", 60, 600), 60)
        database_url = take(lambda: pg_url.checked(get_str(environ, "DATABASE_URL")), "")
        redis = take(lambda: redis_urls.from_env(environ), None)
        settings = cls(
            database_url=database_url,
            redis_url=redis.url if redis else "",
            redis_sentinel_password=redis.sentinel_password if redis else None,
            backend_url=backend_url,
            jwt_access_secret=access or "",
            jwt_refresh_secret=refresh or "",
            jwt_access_secret_previous=access_prev,
            jwt_refresh_secret_previous=refresh_prev,
            internal_jwt_private_key=private_key,
            internal_jwt_private_keys_file=keys_file,
            gateway_config_reload_interval=take(lambda: _reload_interval(environ), 5.0),
            internal_listen_host=take(
                lambda: get_str(environ, "INTERNAL_LISTEN_HOST", "127.0.0.1"), ""
            ),
            internal_listen_port=take(lambda: _port(environ, "INTERNAL_LISTEN_PORT"), None),
            internal_jwks_max_age=take(
                lambda: get_int(environ, "INTERNAL_JWKS_MAX_AGE", 300, minimum=1), 300
            ),
            internal_listen_cert_file=cert_file,
            internal_listen_key_file=key_file,
            redis_key_prefix=prefix,
            gateway_id=take(lambda: get_str(environ, "GATEWAY_ID", "tokengate-gateway"), ""),
            backend_id=backend_id,
            access_token_audience=take(
                lambda: get_str(environ, "ACCESS_TOKEN_AUDIENCE", "tokengate-api"), ""
            ),
            access_token_ttl=access_ttl,
            refresh_token_ttl=refresh_ttl,
            refresh_family_lifetime=take(
                lambda: get_int(environ, "REFRESH_FAMILY_LIFETIME", 2592000, minimum=1), 1
            ),
            refresh_grace_seconds=take(
                lambda: get_int(environ, "REFRESH_GRACE_SECONDS", 10, minimum=0), 0
            ),
            refresh_ledger_retention=take(lambda: ledger_retention(environ, access_ttl), 0),
            refresh_ledger_prune_interval=take(
                lambda: get_int(environ, "REFRESH_LEDGER_PRUNE_INTERVAL", 3600, minimum=0), 0
            ),
            internal_token_ttl=internal_ttl,
            cors_allowed_origins=take(lambda: _origins(environ, "CORS_ALLOWED_ORIGINS"), ()),
            cookie_secure=take(lambda: get_bool(environ, "COOKIE_SECURE", True), True),
            trusted_proxies=take(lambda: _networks(environ, "TRUSTED_PROXIES"), ()),
            login_rate_limit_ip=take(
                lambda: _rate(environ, "LOGIN_RATE_LIMIT_IP", "10/minute"), ""
            ),
            login_rate_limit_account=take(
                lambda: _rate(environ, "LOGIN_RATE_LIMIT_ACCOUNT", "5/minute"), ""
            ),
            refresh_rate_limit=take(lambda: _rate(environ, "REFRESH_RATE_LIMIT", "30/minute"), ""),
            proxy_rate_limit_user=take(lambda: _rate(environ, "PROXY_RATE_LIMIT_USER", ""), ""),
            proxy_rate_limit_ip=take(
                lambda: _rate(environ, "PROXY_RATE_LIMIT_IP", "120/minute"), ""
            ),
            gateway_config=config_path,
            gateway_config_max_bytes=config_max,
            policy=policy,
            proxy_max_body_bytes=take(
                lambda: get_int(environ, "PROXY_MAX_BODY_BYTES", 20971520, minimum=1), 1
            ),
            proxy_connect_timeout=take(
                lambda: get_float(environ, "PROXY_CONNECT_TIMEOUT", 2.0), 2.0
            ),
            proxy_read_timeout=take(lambda: get_float(environ, "PROXY_READ_TIMEOUT", 30.0), 30.0),
            backend_ca_file=ca_file,
            backend_client_cert_file=cert_file,
            backend_client_key_file=key_file,
            proxy_pool_size=pool_size,
            proxy_pool_keepalive=take(
                lambda: get_seconds(environ, "PROXY_POOL_KEEPALIVE", 4.0), 4.0
            ),
            proxy_pool_timeout=take(lambda: get_seconds(environ, "PROXY_POOL_TIMEOUT", 5.0), 5.0),
            proxy_backend_max_head_bytes=take(
                lambda: get_int(environ, "PROXY_BACKEND_MAX_HEAD_BYTES", 65536, minimum=1024),
                65536,
            ),
            proxy_backend_max_interim=take(
                lambda: get_int(environ, "PROXY_BACKEND_MAX_INTERIM", 8, minimum=0), 8
            ),
            body_read_timeout=take(lambda: get_seconds(environ, "BODY_READ_TIMEOUT", 10.0), 10.0),
            proxy_buffer_bytes=take(
                lambda: get_int(environ, "PROXY_BUFFER_BYTES", 262144, minimum=0), 262144
            ),
            proxy_uploads_max=uploads_max,
            proxy_uploads_per_user=take(
                lambda: get_int(environ, "PROXY_UPLOADS_PER_USER", 4, minimum=1), 4
            ),
            proxy_uploads_per_ip=take(
                lambda: get_int(environ, "PROXY_UPLOADS_PER_IP", 16, minimum=1), 16
            ),
            epoch_reload_interval=take(
                lambda: get_float(environ, "EPOCH_RELOAD_INTERVAL", 30.0), 30.0
            ),
            epoch_reload_page_size=take(lambda: _epoch_page_size(environ), 1000),
            log_level=level,
            log_format=take(lambda: log_format_from_env(environ), "json"),
            otel_endpoint=take(lambda: otel.endpoint_from_env(environ), None),
            pool=take(lambda: PoolSettings.from_env(environ), PoolSettings()),
            connections=take(lambda: ConnectionLimits.from_env(environ), ConnectionLimits()),
            public_origins=take(lambda: _public_origins(environ, "PUBLIC_ORIGIN"), ()),
            dpop_iat_window=iat_window,
            dpop_nonce_required=take(
                lambda: get_bool(environ, "DPOP_NONCE_REQUIRED", False), False
            ),
            dpop_nonce_rotation=take(
                lambda: get_int(environ, "DPOP_NONCE_ROTATION", 300, minimum=10), 300
            ),
            dpop_nonce_secret=take(
                lambda: _secret(environ, "DPOP_NONCE_SECRET", required=False), None
            ),
            audit_enabled=take(lambda: get_bool(environ, "AUDIT_ENABLED", True), True),
            audit_queue_size=take(
                lambda: get_int(environ, "AUDIT_QUEUE_SIZE", 10_000, minimum=1), 1
            ),
            audit_batch_size=take(lambda: get_int(environ, "AUDIT_BATCH_SIZE", 500, minimum=1), 1),
            audit_flush_interval=take(lambda: _flush_interval(environ), 1.0),
            audit_query_max_limit=take(
                lambda: get_int(environ, "AUDIT_QUERY_MAX_LIMIT", 200, minimum=1), 1
            ),
            audit_hmac_secret=take(
                lambda: _secret(environ, "AUDIT_HMAC_KEY", required=False), None
            ),
        )
        p.check()
        return settings


def _at_most(environ: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    value = get_int(environ, name, default, minimum=1)
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum} seconds")
    return value


def _backend_url(environ: Mapping[str, str]) -> str:
    backend_url = get_str(environ, "BACKEND_URL").rstrip("/")
    try:
        Origin(backend_url)
    except ValueError as exc:
        # not echoed: a URL with credentials in it would put them in the log
        raise ConfigError(f"BACKEND_URL: {exc}") from None
    return backend_url


def _flush_interval(environ: Mapping[str, str]) -> float:
    value = get_float(environ, "AUDIT_FLUSH_INTERVAL", 0.25, minimum=0.01)
    if value > 1.0:
        # the trail promises an event is queryable within a second of its request
        raise ConfigError("AUDIT_FLUSH_INTERVAL must be at most 1 (seconds)")
    return value


@dataclass(frozen=True)
class OperatorSettings:
    """What ``tokengate sessions`` needs: the ledger, Redis (to broadcast a revocation), and
    optionally the users table.

    The gateway's database role cannot read users (it has no business knowing emails), so
    resolving ``--email`` needs a DSN that can: ``BACKEND_DATABASE_URL`` (the operator's or the
    backend's), falling back to ``DATABASE_URL`` when one superuser DSN serves both (dev stack).
    The gateway service itself never reads ``BACKEND_DATABASE_URL``.
    """

    database_url: str
    #: only ``sessions revoke`` uses it (the broadcast); ``sessions list`` works without it
    redis: redis_urls.RedisTarget | None
    redis_key_prefix: str
    access_token_ttl: int
    users_database_url: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        p = Problems()
        database_url = p.take(lambda: pg_url.checked(get_str(environ, "DATABASE_URL")), "")
        users = environ.get("BACKEND_DATABASE_URL")
        settings = cls(
            database_url=database_url,
            redis=p.take(lambda: redis_urls.from_env(environ), None)
            if environ.get("REDIS_URL")
            else None,
            redis_key_prefix=p.take(lambda: get_str(environ, "REDIS_KEY_PREFIX", "tokengate:"), ""),
            access_token_ttl=p.take(
                lambda: get_int(environ, "ACCESS_TOKEN_TTL", 600, minimum=1), 1
            ),
            users_database_url=p.take(
                lambda: pg_url.checked(users, name="BACKEND_DATABASE_URL"), ""
            )
            if users
            else database_url,
        )
        p.check()
        return settings


@dataclass(frozen=True)
class PruneSettings:
    """What ``tokengate ledger prune`` needs: the ledger's DSN and the retention period."""

    database_url: str
    retention: int
    access_token_ttl: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PruneSettings:
        p = Problems()
        access_ttl = p.take(lambda: get_int(environ, "ACCESS_TOKEN_TTL", 600, minimum=1), 600)
        settings = cls(
            database_url=p.take(lambda: pg_url.checked(get_str(environ, "DATABASE_URL")), ""),
            retention=p.take(lambda: ledger_retention(environ, access_ttl), 0),
            access_token_ttl=access_ttl,
        )
        p.check()
        return settings


#: Longest GATEWAY_CONFIG_RELOAD_INTERVAL: a change must show within the hour at worst.
MAX_RELOAD_INTERVAL = 3600.0


def _reload_interval(environ: Mapping[str, str]) -> float:
    value = get_float(environ, "GATEWAY_CONFIG_RELOAD_INTERVAL", 5.0, minimum=0.1)
    if value > MAX_RELOAD_INTERVAL:
        raise ConfigError(
            f"GATEWAY_CONFIG_RELOAD_INTERVAL must be at most {MAX_RELOAD_INTERVAL:.0f} seconds"
        )
    return value
