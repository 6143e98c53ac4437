"""The gateway's signing keys: one key or a key file, never both; a key file re-read by every
worker, a bad one keeping the last good set (logged, counted); the internal listener."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx
import pytest
from internal_auth import (
    KeyHolder,
    KeySet,
    RemoteKeySet,
    SigningKey,
    SigningKeys,
    TokenScope,
    Verifier,
    generate_private_key,
    verify_signed_key_set,
    write_key_file,
)
from servicekit.config import ConfigError

from gateway.app import create_app
from gateway.metrics import REGISTRY  # the gateway's own registry, the one its listener serves
from gateway.settings import Settings
from gateway.signing import InternalListener, load_keys, reload_once
from tests.support.tls_certs import make_ca_and_server


@pytest.mark.parametrize(
    ("single", "bundle"),
    [
        ("INTERNAL_JWT_PRIVATE_KEY", "INTERNAL_JWT_PRIVATE_KEYS"),
        ("INTERNAL_JWT_PRIVATE_KEY", "INTERNAL_JWT_PRIVATE_KEYS_FILE"),
        ("INTERNAL_JWT_PRIVATE_KEY_FILE", "INTERNAL_JWT_PRIVATE_KEYS"),
    ],
)
def test_one_key_and_a_key_file_together_are_refused_naming_both(
    env: dict[str, str], tmp_path: Path, single: str, bundle: str
) -> None:
    path = tmp_path / "k.pem"
    path.write_text(generate_private_key().private_pem())
    values = {
        name: str(path) if name.endswith("_FILE") else path.read_text() for name in (single, bundle)
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {**{k: v for k, v in env.items() if not k.startswith("INTERNAL_JWT")}, **values}
        )
    assert single in str(caught.value) and bundle in str(caught.value)


def test_a_key_file_with_roles_signs_with_its_active_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    active, upcoming = generate_private_key(), generate_private_key()
    path = tmp_path / "keys.pem"
    write_key_file(path, SigningKeys((SigningKey(upcoming, "next"), SigningKey(active, "active"))))
    settings = Settings.from_env(
        {
            **{k: v for k, v in env.items() if not k.startswith("INTERNAL_JWT")},
            "INTERNAL_JWT_PRIVATE_KEYS_FILE": str(path),
        }
    )
    assert settings.internal_jwt_private_keys_file == str(path)
    app = create_app(settings)
    minter = app.state.minter
    token = minter.mint(sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
    verifier = Verifier(
        KeySet([active.public_key]), issuer=settings.gateway_id, audience=settings.backend_id
    )
    assert verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me").sub == "u"


def test_a_bad_key_in_the_environment_is_refused_at_start_up(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="INTERNAL_JWT_PRIVATE_KEY"):
        create_app(Settings.from_env({**env, "INTERNAL_JWT_PRIVATE_KEY": "role: boss\nnot a key"}))


def failed_reloads() -> float:
    return (
        REGISTRY.get_sample_value(
            "tokengate_gateway_signing_keys_reloads_total", {"outcome": "failed"}
        )
        or 0.0
    )


def test_a_broken_key_file_keeps_the_last_good_set_logged_and_counted(
    env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_private_key()
    path = tmp_path / "keys.pem"
    write_key_file(path, SigningKeys.single(key))
    settings = Settings.from_env(
        {
            **{k: v for k, v in env.items() if not k.startswith("INTERNAL_JWT")},
            "INTERNAL_JWT_PRIVATE_KEY_FILE": str(path),
        }
    )
    holder = load_keys(settings)
    assert reload_once(holder) is False
    before = failed_reloads()
    path.write_text(key.private_pem()[:60])  # half written
    with caplog.at_level(logging.ERROR, logger="gateway.signing"):
        assert reload_once(holder) is False
    assert holder.signer.kid == key.kid
    assert failed_reloads() == before + 1
    assert any(
        "signing_keys_reload_failed" in r.getMessage()
        or getattr(r, "event", "") == "signing_keys_reload_failed"
        for r in caplog.records
    )
    assert key.private_pem().splitlines()[1] not in caplog.text
    other = generate_private_key()
    write_key_file(path, SigningKeys.single(other))
    assert reload_once(holder) is True and holder.signer.kid == other.kid


def test_the_listener_publishes_every_key_and_follows_the_file(tmp_path: Path) -> None:
    active, upcoming = generate_private_key(), generate_private_key()
    path = tmp_path / "keys.pem"
    write_key_file(path, SigningKeys.single(active))
    listener = InternalListener(KeyHolder.from_file(path), host="127.0.0.1", port=0, max_age=7)
    listener.start()
    try:
        base = f"http://127.0.0.1:{listener.port}"
        write_key_file(
            path, SigningKeys((SigningKey(active, "active"), SigningKey(upcoming, "next")))
        )
        plain = httpx.get(base + "/.well-known/jwks.json")
        assert plain.headers["cache-control"] == "max-age=7"
        assert {k["kid"] for k in plain.json()["keys"]} == {active.kid, upcoming.kid}
        signed = httpx.get(base + "/.well-known/jwks.jws").content
        for trusted in (active, upcoming):
            assert len(verify_signed_key_set(signed, KeySet([trusted.public_key]))) == 2
        assert httpx.get(base + "/").status_code == 404
        assert httpx.head(base + "/.well-known/jwks.json").status_code == 200
    finally:
        listener.stop()


async def test_over_tls_a_service_trusts_the_listener_through_its_pinned_ca(
    tmp_path: Path,
) -> None:
    active, upcoming = generate_private_key(), generate_private_key()
    path = tmp_path / "keys.pem"
    write_key_file(path, SigningKeys((SigningKey(active, "active"), SigningKey(upcoming, "next"))))
    (tmp_path / "good").mkdir()
    (tmp_path / "other").mkdir()
    ca, cert, key = make_ca_and_server(tmp_path / "good")
    other_ca, _, _ = make_ca_and_server(tmp_path / "other")
    listener = InternalListener(
        KeyHolder.from_file(path),
        host="127.0.0.1",
        port=0,
        max_age=7,
        certificate=(str(cert), str(key)),
    )
    listener.start()
    url = f"https://127.0.0.1:{listener.port}/.well-known/jwks.json"
    pinned = KeySet([active.public_key])
    try:
        trusted = RemoteKeySet(pinned, url, ssl_context=ssl.create_default_context(cafile=str(ca)))
        stranger = RemoteKeySet(
            pinned, url, ssl_context=ssl.create_default_context(cafile=str(other_ca))
        )
        try:
            assert await trusted.refresh() == "ok" and upcoming.kid in trusted
            # a listener whose certificate the service's CA did not sign: nothing accepted
            assert await stranger.refresh() == "failed" and upcoming.kid not in stranger
        finally:
            await trusted.close()
            await stranger.close()
        # plain HTTP to the TLS listener gets no key set
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{listener.port}/.well-known/jwks.json", timeout=2)
    finally:
        listener.stop()


def test_a_listener_certificate_without_its_key_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="INTERNAL_LISTEN_KEY_FILE"):
        Settings.from_env({**env, "INTERNAL_LISTEN_CERT_FILE": "/cert.pem"})
