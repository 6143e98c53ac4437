"""The backend's fetched key set settings: refused at start-up with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest
from internal_auth import generate_private_key
from servicekit.config import ConfigError

from backend.app import create_app
from backend.settings import Settings

PUBLIC = generate_private_key().public_pem()


def settings(**env: str) -> Settings:
    return Settings.from_env(
        {"DATABASE_URL": "postgresql://x/y", "INTERNAL_JWT_PUBLIC_KEY": PUBLIC, **env}
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"INTERNAL_JWKS_URL": "ftp://gw/.well-known/jwks.json"}, "INTERNAL_JWKS_URL"),
        ({"INTERNAL_JWKS_URL": "http://gw/keys"}, "jwks.json"),
        ({"INTERNAL_JWKS_URL": "http://u:p@gw/.well-known/jwks.json"}, "credentials"),
        ({"INTERNAL_JWKS_URL": "https://gw/.well-known/jwks.json"}, "INTERNAL_JWKS_CA_FILE"),
        ({"INTERNAL_JWKS_CA_FILE": "/ca.pem"}, "INTERNAL_JWKS_URL is not"),
        (
            {"INTERNAL_JWKS_URL": "http://gw/.well-known/jwks.json", "INTERNAL_JWKS_COOLDOWN": "0"},
            "INTERNAL_JWKS_COOLDOWN",
        ),
    ],
)
def test_bad_key_set_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings(**env)


def test_an_unreadable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    configured = settings(
        INTERNAL_JWKS_URL="https://gw/.well-known/jwks.json",
        INTERNAL_JWKS_CA_FILE=str(tmp_path / "missing.pem"),
    )
    with pytest.raises(ConfigError, match="INTERNAL_JWKS_CA_FILE"):
        create_app(configured)


def test_the_key_set_settings_and_their_defaults() -> None:
    assert settings().jwks_url is None
    fetched = settings(
        INTERNAL_JWKS_URL="http://gw/.well-known/jwks.json", INTERNAL_JWKS_REFRESH_INTERVAL="2"
    )
    assert fetched.jwks_refresh_interval == 2.0 and fetched.jwks_cooldown == 5.0
    assert (
        settings(INTERNAL_JWKS_URL="http://gw/.well-known/jwks.json").jwks_refresh_interval is None
    )
