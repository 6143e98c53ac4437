"""``tokengate client login|call|refresh|logout`` end to end against the real stack (gateway and
backend processes, real PostgreSQL and Redis): the way in for curl users (issue 24, item 10).

Every command runs as its own process, as a shell user would run it, so the session really lives
on disk between runs: the key and the newest refresh token, in 0600 files of a 0700 folder.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, dpop_stack, free_port

pytestmark = pytest.mark.e2e

PASSWORD = "client cli correct horse battery"


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    # the account limit at its default: a session from the shell does not use it up
    with dpop_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        LOGIN_RATE_LIMIT_ACCOUNT="5/minute",
    ) as running:
        yield running


def _client(
    folder: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "client", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOKENGATE_CLIENT_DIR": str(folder), **(env or {})},
    )


def _user(stack: Stack) -> str:
    email = f"cli-client-{time.monotonic_ns()}@example.test"
    stack.create_user(email, PASSWORD)
    return email


def _login(stack: Stack, folder: Path, email: str) -> None:
    done = _client(
        folder, "login", "--url", stack.gateway_url, "--email", email, "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"logged in as {email}" in done.stdout


def _session(folder: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((folder / "session.json").read_text())
    return data


def test_login_call_refresh_logout(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "client"
    email = _user(stack)
    _login(stack, folder, email)

    # the key and the session are private, and no file holds the password
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("dpop-key.pem", "session.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
        assert PASSWORD not in (folder / name).read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["dpop-key.pem", "session.json"]

    me = _client(folder, "call", "GET", "/api/v1/me")
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["email"] == email
    note = _client(folder, "call", "POST", "/api/v1/notes", "--data", '{"title": "from a shell"}')
    assert note.returncode == 0, note.stderr
    note_id = json.loads(note.stdout)["id"]
    piped = _client(
        folder, "call", "PATCH", f"/api/v1/notes/{note_id}", "--data", "-", stdin='{"body": "b"}'
    )
    assert piped.returncode == 0, piped.stderr
    sessions = json.loads(_client(folder, "call", "GET", "/api/v1/auth/sessions").stdout)
    assert [s["key_bound"] for s in sessions["sessions"]] == [True]

    # refresh rotates the refresh token on disk; the session carries on with the new one
    before = _session(folder)["refresh_token"]
    refreshed = _client(folder, "refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    assert _session(folder)["refresh_token"] != before
    assert _client(folder, "call", "GET", "/api/v1/me").returncode == 0

    # a status that is not 2xx: the body is printed, the exit status is 1
    missing = _client(folder, "call", "GET", f"/api/v1/notes/{'0' * 8}-0000-0000-0000-{'0' * 12}")
    assert missing.returncode == 1 and "not_found" in missing.stdout

    out = _client(folder, "logout")
    assert out.returncode == 0, out.stderr
    assert not (folder / "session.json").exists() and not (folder / "dpop-key.pem").exists()
    after = _client(folder, "call", "GET", "/api/v1/me")
    assert after.returncode == 2 and "tokengate client login" in after.stderr


def test_a_revoked_session_ends_the_cli_session_and_never_logs_in_again(
    stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "client"
    email = _user(stack)
    _login(stack, folder, email)
    revoke = stack.revoke_sessions(email)
    assert revoke.returncode == 0, revoke.stderr
    # the access token on disk is still fresh: the gateway refuses it, the refresh is refused,
    # and the command says the session ended (a moment for the broadcast to arrive)
    deadline = time.monotonic() + 5
    while (done := _client(folder, "call", "GET", "/api/v1/me")).returncode == 0:
        assert time.monotonic() < deadline, "the revoked session still works"
        time.sleep(0.1)
    assert done.returncode == 1
    assert "session ended" in done.stderr and "tokengate client login" in done.stderr
    assert not (folder / "session.json").exists()


def test_files_others_can_read_are_refused(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "client"
    _login(stack, folder, _user(stack))
    (folder / "dpop-key.pem").chmod(0o644)
    done = _client(folder, "call", "GET", "/api/v1/me")
    assert done.returncode == 2
    assert "may be read by others" in done.stderr and "chmod 600" in done.stderr
    (folder / "dpop-key.pem").chmod(0o600)
    folder.chmod(0o755)
    assert _client(folder, "refresh").returncode == 2
    folder.chmod(0o700)
    assert _client(folder, "logout").returncode == 0


def test_refused_logins_and_bad_input(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "client"
    email = _user(stack)
    wrong = _client(
        folder, "login", "--url", stack.gateway_url, "--email", email, "--password-stdin",
        stdin="not the password\n",
    )  # fmt: skip
    assert wrong.returncode == 1 and "login failed: 401 invalid_credentials" in wrong.stderr
    assert not (folder / "session.json").exists()
    no_tty = _client(folder, "login", "--url", stack.gateway_url, "--email", email)
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    bad_url = _client(
        folder, "login", "--url", "127.0.0.1:1", "--email", email, "--password-stdin", stdin="x"
    )
    assert bad_url.returncode == 2
    _login(stack, folder, email)
    assert _client(folder, "call", "POST", "/api/v1/notes", "--data", "{no").returncode == 2
    assert _client(folder, "call", "GET", "api/v1/me").returncode == 2
    # a body from standard input is bounded (1 MiB) before anything is sent
    huge = _client(
        folder, "call", "POST", "/api/v1/notes", "--data", "-", stdin="[" * (1 << 20) + "["
    )
    assert huge.returncode == 2 and "over 1048576 bytes" in huge.stderr
    assert _client(folder, "logout").returncode == 0


def test_a_refused_refresh_that_is_not_the_end_keeps_the_session(
    stack: Stack, tmp_path: Path
) -> None:
    """A 429 (or a 503) is not the end of the session: the files stay, the next call works."""
    port = free_port()
    with stack.extra_gateway(
        port, PUBLIC_ORIGIN=f"http://127.0.0.1:{port}", REFRESH_RATE_LIMIT="1/minute"
    ) as url:
        folder = tmp_path / "client"
        email = _user(stack)
        done = _client(
            folder, "login", "--url", url, "--email", email, "--password-stdin",
            stdin=PASSWORD + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert _client(folder, "refresh").returncode == 0
        kept = _session(folder)["refresh_token"]
        limited = _client(folder, "refresh")
        assert limited.returncode == 1
        assert "429 rate_limited" in limited.stderr and "the session is kept" in limited.stderr
        assert _session(folder)["refresh_token"] == kept
        assert _client(folder, "call", "GET", "/api/v1/me").returncode == 0
        assert _client(folder, "logout").returncode == 0
