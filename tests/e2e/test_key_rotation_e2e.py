"""Signing-key rotation under steady traffic, through two gateway instances and a backend that
fetches the published key set: stage → promote → retire with the waits the command enforces,
and once more with ``--force`` at every step into a backend that learns keys on unknown kids.
Zero non-2xx answers either way. Also: the key set is served on the internal listener only."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from internal_auth import (
    KeySet,
    SigningKeys,
    generate_private_key,
    verify_signed_key_set,
    write_key_file,
)

from tests.support.scrape import scrape
from tests.support.stack import Stack, free_port, running_stack

pytestmark = pytest.mark.e2e

PASSWORD = "rotation correct horse battery staple"
RELOAD = "0.2"
TOKEN_TTL = "2"
LEEWAY = "1"
MAX_AGE = "1"
COOLDOWN = "0.5"


@dataclass
class Traffic:
    """GET /api/v1/me in a loop, alternating two gateways; every answer's status is kept."""

    urls: tuple[str, str]
    token: str
    statuses: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            i = 0
            while not self.stop.is_set():
                url = self.urls[i % 2] + "/api/v1/me"
                i += 1
                try:
                    status = client.get(url, headers={"Authorization": f"Bearer {self.token}"})
                    self.statuses.append(status.status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)
                time.sleep(0.01)

    @property
    def failures(self) -> list[int]:
        return [s for s in self.statuses if not 200 <= s < 300]


def rotate(key_file: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNAL_")}
    env.update(
        INTERNAL_JWKS_MAX_AGE=MAX_AGE,
        INTERNAL_JWKS_COOLDOWN=COOLDOWN,
        GATEWAY_CONFIG_RELOAD_INTERVAL=RELOAD,
        INTERNAL_TOKEN_TTL=TOKEN_TTL,
        INTERNAL_TOKEN_LEEWAY=LEEWAY,
    )
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "keys", "rotate", "--file", str(key_file), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Rotating:
    stack: Stack
    second: str
    key_file: Path
    listener: str
    backend_metrics: str


@contextlib.contextmanager
def rotating_stack(
    migrated_dsn: str, redis_url: str, redis_prefix: str, tmp: Path, *, backend_refresh: str
) -> Iterator[Rotating]:
    """Two gateways signing from one key file, the first publishing it; a backend pinned to the
    first key and fetching the set (``backend_refresh`` seconds apart, '' = the max-age)."""
    key = generate_private_key()
    key_file = tmp / "internal_jwt_private_keys.pem"
    write_key_file(key_file, SigningKeys.single(key))
    listen, bmetrics = free_port(), free_port()
    listener = f"http://127.0.0.1:{listen}"
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env={
            "INTERNAL_JWT_PRIVATE_KEY": "",
            "INTERNAL_JWT_PRIVATE_KEYS_FILE": str(key_file),
            "GATEWAY_CONFIG_RELOAD_INTERVAL": RELOAD,
            "INTERNAL_TOKEN_TTL": TOKEN_TTL,
            "INTERNAL_LISTEN_PORT": str(listen),
            "INTERNAL_JWKS_MAX_AGE": MAX_AGE,
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
        },
        backend_env={
            "INTERNAL_JWT_PUBLIC_KEY": key.public_pem(),
            "INTERNAL_JWKS_URL": listener + "/.well-known/jwks.json",
            "INTERNAL_JWKS_REFRESH_INTERVAL": backend_refresh,
            "INTERNAL_JWKS_COOLDOWN": COOLDOWN,
            "INTERNAL_TOKEN_LEEWAY": LEEWAY,
            "METRICS_PORT": str(bmetrics),
            "ARGON2_MEMORY_KIB": "8192",
        },
    ) as stack:
        # the second instance signs from the same file but does not publish (one listener)
        with stack.extra_gateway(INTERNAL_LISTEN_PORT="") as second:
            yield Rotating(
                stack, second, key_file, listener, f"http://127.0.0.1:{bmetrics}/metrics"
            )


@contextlib.contextmanager
def traffic(env: Rotating) -> Iterator[Traffic]:
    email = f"rotate-{uuid.uuid4().hex[:8]}@example.test"
    env.stack.create_user(email, PASSWORD)
    login = httpx.post(
        env.stack.gateway_url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    running = Traffic((env.stack.gateway_url, env.second), login.json()["access_token"])
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        yield running
    finally:
        running.stop.set()
        thread.join(timeout=15)


def known_kids(metrics_url: str) -> set[str]:
    samples = scrape(metrics_url)
    return {
        dict(labels)["kid"]
        for (name, labels), value in samples.items()
        if name == "tokengate_backend_internal_jwks_keys" and value == 1
    }


def wait_until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_a_full_rotation_with_the_waits_fails_no_request(
    migrated_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    with (
        rotating_stack(
            migrated_dsn, redis_url, redis_prefix, tmp_path, backend_refresh="0.5"
        ) as env,
        traffic(env) as running,
    ):
        first = SigningKeys.parse(env.key_file.read_text()).signer.kid
        staged = rotate(env.key_file, "--stage")
        assert staged.returncode == 0, staged.stderr
        upcoming = SigningKeys.parse(env.key_file.read_text()).role("next").kid  # type: ignore[union-attr]
        # the backend learns the staged key from its scheduled refresh, before it ever signs
        wait_until(lambda: upcoming in known_kids(env.backend_metrics), 10)
        assert rotate(env.key_file, "--promote", INTERNAL_JWKS_MAX_AGE="60").returncode == 1
        time.sleep(float(MAX_AGE) + float(COOLDOWN))
        promoted = rotate(env.key_file, "--promote")
        assert promoted.returncode == 0, promoted.stderr
        time.sleep(1.0)  # both gateways now sign with the new key
        # too soon after the promote (a long token lifetime, so a slow start cannot pass it)
        assert rotate(env.key_file, "--retire", INTERNAL_TOKEN_TTL="60").returncode == 1
        time.sleep(float(RELOAD) + float(TOKEN_TTL) + float(LEEWAY) + 0.5)
        retired = rotate(env.key_file, "--retire")
        assert retired.returncode == 0, retired.stderr
        published = httpx.get(env.listener + "/.well-known/jwks.json").json()["keys"]
        assert [k["kid"] for k in published] == [upcoming]
        # the first key is the backend's pinned root: it stays trusted there by design
        assert {first, upcoming} <= known_kids(env.backend_metrics)
        time.sleep(1.0)
    assert len(running.statuses) > 100
    assert running.failures == []


def test_a_forced_rotation_is_learnt_on_the_unknown_kid_and_fails_no_request(
    migrated_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # backend refresh left at the max-age (1 s) would hide the unknown-kid path: make it long
    with (
        rotating_stack(
            migrated_dsn, redis_url, redis_prefix, tmp_path, backend_refresh="600"
        ) as env,
        traffic(env) as running,
    ):
        check_the_listener(env)
        for step in ("--stage", "--promote", "--retire"):
            done = rotate(env.key_file, step, "--force")
            assert done.returncode == 0, (step, done.stderr)
            time.sleep(1.0)
        active = SigningKeys.parse(env.key_file.read_text()).signer.kid
        assert active in known_kids(env.backend_metrics)
        fetches = scrape(env.backend_metrics)
    assert len(running.statuses) > 100
    assert running.failures == []
    learnt = sum(
        v
        for (n, labels), v in fetches.items()
        if n == "tokengate_backend_internal_jwks_fetches_total" and ("outcome", "ok") in labels
    )
    assert learnt >= 1


def check_the_listener(env: Rotating) -> None:
    """The key set is served on the internal listener only, never the public port."""
    plain = httpx.get(env.listener + "/.well-known/jwks.json")
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/jwk-set+json"
    assert plain.headers["cache-control"] == f"max-age={MAX_AGE}"
    jwk = plain.json()["keys"][0]
    assert jwk["use"] == "sig" and jwk["alg"] == "EdDSA" and "d" not in jwk
    pinned = SigningKeys.parse(env.key_file.read_text()).public_keys
    signed = httpx.get(env.listener + "/.well-known/jwks.jws")
    assert set(verify_signed_key_set(signed.content, KeySet(pinned)).kids) == set(pinned.kids)
    assert httpx.get(env.listener + "/metrics").status_code == 404
    for public in (env.stack.gateway_url, env.second):
        for path in ("/.well-known/jwks.json", "/.well-known/jwks.jws"):
            assert httpx.get(public + path).status_code == 404
