"""``tokengate gateway`` refuses a bad GATEWAY_CONFIG at start-up (issue 20): exit status 2 and one
line per problem on stderr, each naming the file, the line, the key and the offending value; run
as a subprocess, the way an operator or a container runtime starts it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from internal_auth import generate_private_key

from tests.support.stack import free_port

BAD = """\
version = 1
identity = "backend"

[services.backend]
url = "http://127.0.0.1:1"
audience = "tokengate-backend"
colour = "blue"

[[route]]
prefix = "/"
service = "backend"

[[route]]
prefix = "/files"
service = "nosuch"

[[rule]]
name = "files"
effect = "allow"
paths = ["/files//x"]
authenticated = true
"""


def _run(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "INTERNAL_JWT"))}
    base.pop("BACKEND_URL", None)
    environ = {
        **base,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "JWT_ACCESS_SECRET": secrets.token_urlsafe(32),
        "JWT_REFRESH_SECRET": secrets.token_urlsafe(32),
        "INTERNAL_JWT_PRIVATE_KEY": generate_private_key().private_pem(),
        "GATEWAY_CONFIG": str(config),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "gateway", "--port", str(free_port())],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_file_stops_the_gateway_naming_line_key_and_value(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(BAD)
    done = _run(config)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert f'{config}:7: services.backend.colour "blue" is not a known key' in lines
    assert f'{config}:15: route.service "nosuch" is not a service' in lines
    assert any(
        line.startswith(f'{config}:20: rule.paths "/files//x" has an empty segment')
        for line in lines
    )
    assert len([line for line in lines if line.startswith(str(config))]) == 3
    assert "Traceback" not in done.stderr


def test_an_unreadable_or_oversized_file_is_exit_2(tmp_path: Path) -> None:
    missing = _run(tmp_path / "nope.toml")
    assert (
        missing.returncode == 2
        and "nope.toml" in missing.stderr
        and "cannot be read" in missing.stderr
    )
    config = tmp_path / "gateway.toml"
    config.write_text(BAD)
    big = _run(config, GATEWAY_CONFIG_MAX_BYTES="100")
    assert big.returncode == 2 and "GATEWAY_CONFIG_MAX_BYTES (100)" in big.stderr
