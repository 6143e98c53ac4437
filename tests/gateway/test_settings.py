"""Start-up validation: bad settings are refused with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest
from servicekit.config import ConfigError

from gateway.app import create_app
from gateway.settings import Settings


def test_defaults(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    assert settings.gateway_id == "tokengate-gateway"
    assert settings.backend_id == "tokengate-backend"
    assert settings.access_token_audience == "tokengate-api"
    assert (settings.access_token_ttl, settings.refresh_token_ttl) == (600, 1209600)
    assert (settings.refresh_family_lifetime, settings.refresh_grace_seconds) == (2592000, 10)
    assert settings.refresh_ledger_retention == 7 * 86400
    assert settings.refresh_ledger_prune_interval == 3600
    assert settings.cookie_secure is True
    assert settings.trusted_proxies == ()
    assert settings.proxy_rate_limit_user == ""
    assert settings.proxy_max_body_bytes == 20971520
    assert (settings.proxy_connect_timeout, settings.proxy_read_timeout) == (2.0, 30.0)
    text = repr(settings)
    assert settings.jwt_access_secret not in text and settings.jwt_refresh_secret not in text


def test_a_backend_url_with_credentials_is_refused_without_echoing_them(
    env: dict[str, str],
) -> None:
    with pytest.raises(ConfigError, match="BACKEND_URL") as caught:
        Settings.from_env({**env, "BACKEND_URL": "http://svc:s3cret-pw@backend:8000"})
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"JWT_ACCESS_SECRET": "short"}, "JWT_ACCESS_SECRET"),
        ({"JWT_REFRESH_SECRET": "x" * 31}, "JWT_REFRESH_SECRET"),
        ({"JWT_ACCESS_SECRET_PREVIOUS": "short"}, "JWT_ACCESS_SECRET_PREVIOUS"),
        ({"JWT_REFRESH_SECRET": None}, "JWT_REFRESH_SECRET"),
        ({"JWT_ACCESS_SECRET": None}, "JWT_ACCESS_SECRET"),
        ({"INTERNAL_JWT_PRIVATE_KEY": None}, "INTERNAL_JWT_PRIVATE_KEY"),
        ({"DATABASE_URL": None}, "DATABASE_URL"),
        ({"REDIS_URL": None}, "REDIS_URL"),
        # a revoked family must outlive its access tokens (revoked-set rebuild from the ledger)
        ({"REFRESH_LEDGER_RETENTION": "599"}, "REFRESH_LEDGER_RETENTION"),
        ({"REFRESH_LEDGER_RETENTION": "week"}, "REFRESH_LEDGER_RETENTION"),
        ({"REFRESH_LEDGER_PRUNE_INTERVAL": "-1"}, "REFRESH_LEDGER_PRUNE_INTERVAL"),
        ({"BACKEND_URL": None}, "BACKEND_URL"),
        ({"BACKEND_URL": "ftp://backend:8000"}, "BACKEND_URL"),
        ({"BACKEND_URL": "backend:8000"}, "BACKEND_URL"),
        ({"BACKEND_URL": "http://backend:99999"}, "BACKEND_URL"),
        ({"BACKEND_URL": "http://backend:8000/?debug=1"}, "BACKEND_URL"),
        ({"CORS_ALLOWED_ORIGINS": "*"}, "CORS_ALLOWED_ORIGINS"),
        ({"CORS_ALLOWED_ORIGINS": "https://ok.test,https://*.test"}, "CORS_ALLOWED_ORIGINS"),
        ({"CORS_ALLOWED_ORIGINS": "https://ok.test/"}, "CORS_ALLOWED_ORIGINS"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,not-an-ip"}, "TRUSTED_PROXIES"),
        ({"LOGIN_RATE_LIMIT_IP": "lots"}, "LOGIN_RATE_LIMIT_IP"),
        ({"ACCESS_TOKEN_TTL": "ten"}, "ACCESS_TOKEN_TTL"),
        ({"REFRESH_GRACE_SECONDS": "-1"}, "REFRESH_GRACE_SECONDS"),
        ({"COOKIE_SECURE": "maybe"}, "COOKIE_SECURE"),
        ({"INTERNAL_TOKEN_TTL": "120"}, "INTERNAL_TOKEN_TTL"),
        # issue 29: the HA forms, checked at start-up
        ({"REDIS_URL": "redis+cluster://r1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+sentinel://s1:26379"}, "REDIS_URL"),
        ({"REDIS_SENTINEL_PASSWORD": "for-a-plain-url"}, "REDIS_SENTINEL_PASSWORD"),
        ({"DATABASE_URL": "postgresql://gw@db1,db2/tokengate"}, "DATABASE_URL"),
        # issue 28: the audit trail's bounds (an event is queryable within a second)
        ({"AUDIT_FLUSH_INTERVAL": "1.5"}, "AUDIT_FLUSH_INTERVAL"),
        ({"AUDIT_QUEUE_SIZE": "0"}, "AUDIT_QUEUE_SIZE"),
        ({"AUDIT_BATCH_SIZE": "0"}, "AUDIT_BATCH_SIZE"),
        ({"AUDIT_QUERY_MAX_LIMIT": "0"}, "AUDIT_QUERY_MAX_LIMIT"),
        ({"AUDIT_ENABLED": "maybe"}, "AUDIT_ENABLED"),
        ({"AUDIT_HMAC_KEY": "short"}, "AUDIT_HMAC_KEY"),
    ],
)
def test_bad_settings_name_the_variable(
    env: dict[str, str], overrides: dict[str, str | None], variable: str
) -> None:
    environ = {**env}
    for name, value in overrides.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(environ)


@pytest.mark.parametrize(
    "overrides",
    [
        {"JWT_REFRESH_SECRET": "same-secret-for-both-" + "x" * 20,
         "JWT_ACCESS_SECRET": "same-secret-for-both-" + "x" * 20},
        {"JWT_REFRESH_SECRET_PREVIOUS": "access-secret-for-tests-0123456789abcdef"},
    ],
    ids=["identical", "previous-overlaps"],
)  # fmt: skip
def test_identical_secrets_are_refused(env: dict[str, str], overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="JWT_ACCESS_SECRET and JWT_REFRESH_SECRET"):
        Settings.from_env({**env, **overrides})


def test_secrets_from_files(env: dict[str, str], tmp_path: Path) -> None:
    access = tmp_path / "access"
    access.write_text("file-access-secret-0123456789abcdefgh\n")
    key = tmp_path / "key.pem"
    key.write_text(env["INTERNAL_JWT_PRIVATE_KEY"])
    environ = {
        **env,
        "JWT_ACCESS_SECRET_FILE": str(access),
        "INTERNAL_JWT_PRIVATE_KEY_FILE": str(key),
    }
    del environ["JWT_ACCESS_SECRET"], environ["INTERNAL_JWT_PRIVATE_KEY"]
    settings = Settings.from_env(environ)
    assert settings.jwt_access_secret == "file-access-secret-0123456789abcdefgh"
    create_app(settings)


def test_short_secret_from_file_names_the_variable(env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "refresh"
    secret.write_text("short")
    environ = {**env, "JWT_REFRESH_SECRET_FILE": str(secret)}
    del environ["JWT_REFRESH_SECRET"]
    with pytest.raises(ConfigError, match="JWT_REFRESH_SECRET"):
        Settings.from_env(environ)


def test_invalid_private_key_is_refused_at_start_up_in_the_same_report(
    env: dict[str, str],
) -> None:
    """A bad key is one more line of the one start-up report, beside every other problem."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {**env, "INTERNAL_JWT_PRIVATE_KEY": "not a key", "ACCESS_TOKEN_TTL": "soon"}
        )
    text = str(caught.value)
    assert "INTERNAL_JWT_PRIVATE_KEY" in text and "ACCESS_TOKEN_TTL" in text
    assert "not a key" not in text


def test_trusted_proxies_parse(env: dict[str, str]) -> None:
    settings = Settings.from_env({**env, "TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]


def test_sentinel_and_several_database_hosts_are_accepted(env: dict[str, str]) -> None:
    settings = Settings.from_env(
        {
            **env,
            "REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26379/tokengate?db=1",
            "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
            "DATABASE_URL": "postgresql://gw@db1,db2:5433/tg?target_session_attrs=read-write",
        }
    )
    assert settings.redis.sentinels == (("s1", 26379), ("s2", 26379))
    assert settings.redis.sentinel_password == "sentinel-secret"
    assert "sentinel-secret" not in repr(settings)
