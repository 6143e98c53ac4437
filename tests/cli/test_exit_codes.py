"""Issue 23: every command's failure is one line that says what to do, with one exit code
scheme for all (0 done, 1 nothing matched, 2 usage/configuration, 3 dependency unavailable,
4 permission), through the real command line against a real database and its roles."""

from __future__ import annotations

import re
import secrets
import subprocess
import uuid
from collections.abc import Callable

import pytest
from servicekit.commands import EXIT_CODES
from servicekit.config import ConfigError

from backend.settings import Settings as BackendSettings
from gateway.settings import Settings as GatewaySettings
from tests.cli.test_backend_cli import tokengate
from tests.gateway.conftest import as_role

PASSWORD = "exit codes password"
FULLWIDTH = "\uff24\uff25\uff2d\uff2f"  # fullwidth DEMO: NFKC folds it into DEMO


@pytest.fixture(scope="module")
def account(migrated_dsn: str) -> tuple[str, str]:
    """A user created through the CLI as the backend's role: (email, id)."""
    local = f"demo{secrets.token_hex(3)}"
    email = f"{local}@example.test"
    env = {"DATABASE_URL": as_role(migrated_dsn, "tokengate_backend"), "ARGON2_MEMORY_KIB": "1024"}
    done = tokengate(
        "users", "create", "--email", email, "--password-stdin", stdin=PASSWORD, env=env
    )
    assert done.returncode == 0, done.stderr
    return email, done.stdout.strip()


def _one_line(done: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    assert done.returncode == code, (done.stderr, code)
    err = done.stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in says:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_not_found_is_1_for_every_command(migrated_dsn: str) -> None:
    backend = {"DATABASE_URL": as_role(migrated_dsn, "tokengate_backend")}
    gateway = {"DATABASE_URL": as_role(migrated_dsn, "tokengate_gateway")}
    _one_line(
        tokengate("users", "show", "--email", "nobody@example.test", env=backend), 1, "no user"
    )
    _one_line(tokengate("users", "disable", "--email", "nobody@example.test", env=backend), 1)
    listing = tokengate(
        "sessions", "list", "--email", "nobody@example.test",
        env={**gateway, "BACKEND_DATABASE_URL": backend["DATABASE_URL"]}, unset=("REDIS",),
    )  # fmt: skip
    _one_line(listing, 1, "no user with email")
    # an unknown family was "revoked 0 session(s)", exit 0
    family = tokengate("sessions", "revoke", "--family", str(uuid.uuid4()), env=gateway)
    _one_line(family, 1, "no session")


def test_usage_and_configuration_are_2(migrated_dsn: str) -> None:
    bad_url = {"DATABASE_URL": "mysql://u:secret-pw@db/x"}
    commands = [
        ("users", "list"),
        ("sessions", "list", "--user-id", str(uuid.uuid4())),
        ("ledger", "prune"),
        ("migrate",),
    ]
    for args in commands:
        line = _one_line(tokengate(*args, env=bad_url, unset=("REDIS",)), 2, "DATABASE_URL")
        assert "secret-pw" not in line
    _one_line(tokengate("users", "list", "--limit", "0", env={"DATABASE_URL": migrated_dsn}), 2)
    assert tokengate("users", "frobnicate").returncode == 2  # argparse's own usage error


def test_an_unreachable_database_is_3() -> None:
    down = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    commands = [
        ("users", "list"),
        ("users", "show", "--email", "a@example.test"),
        ("ledger", "prune"),
        ("sessions", "list", "--user-id", str(uuid.uuid4())),
    ]
    for args in commands:
        _one_line(
            tokengate(*args, env=down, unset=("REDIS",)), 3, "cannot reach PostgreSQL", "retry"
        )


def test_the_wrong_role_is_4_and_names_the_role_to_use(migrated_dsn: str) -> None:
    # issue 23: `sessions` and `ledger prune` with the backend's role were raw tracebacks
    backend = {"DATABASE_URL": as_role(migrated_dsn, "tokengate_backend")}
    gateway = {"DATABASE_URL": as_role(migrated_dsn, "tokengate_gateway")}
    sessions = tokengate("sessions", "list", "--user-id", str(uuid.uuid4()), env=backend)
    _one_line(sessions, 4, "permission denied", "tokengate_gateway")
    _one_line(
        tokengate("ledger", "prune", env=backend), 4, "permission denied", "tokengate_gateway"
    )
    _one_line(tokengate("users", "list", env=gateway), 4, "permission denied", "tokengate_backend")
    by_email = tokengate("sessions", "list", "--email", "a@example.test", env=gateway)
    _one_line(by_email, 4, "BACKEND_DATABASE_URL", "tokengate_backend")


@pytest.mark.parametrize(
    "spelling", [lambda e: f"  {e.upper()}  ", lambda e: FULLWIDTH + e.removeprefix("demo")]
)
def test_every_email_option_takes_any_spelling_of_the_address(
    migrated_dsn: str, account: tuple[str, str], spelling: Callable[[str], str]
) -> None:
    email, user_id = account
    other = spelling(email)
    assert other != email
    backend = {"DATABASE_URL": as_role(migrated_dsn, "tokengate_backend")}
    shown = tokengate("users", "show", "--email", other, env=backend)
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^id:\s+{user_id}$", shown.stdout, re.M)
    # sessions --email matched with SQL lower(): these spellings were "no such user"
    operator = {
        "DATABASE_URL": as_role(migrated_dsn, "tokengate_gateway"),
        "BACKEND_DATABASE_URL": backend["DATABASE_URL"],
    }
    for action in ("list", "revoke"):
        done = tokengate("sessions", action, "--email", other, env=operator, unset=("REDIS",))
        assert done.returncode == 0, done.stderr
    assert "revoked 0 session(s)" in done.stdout


def test_users_list_and_show(migrated_dsn: str, account: tuple[str, str]) -> None:
    email, user_id = account
    env = {"DATABASE_URL": as_role(migrated_dsn, "tokengate_backend")}
    listed = tokengate("users", "list", "--limit", "10000", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if user_id in line)
    assert row.split() == [user_id, "active", row.split()[2], "user", email]
    assert re.fullmatch(r"1-\d+ of \d+ user\(s\)\n", listed.stderr)
    shown = tokengate("users", "show", "--email", email, env=env)
    assert "status:        active" in shown.stdout and "token_epoch:" in shown.stdout


def test_version_description_and_exit_codes_in_help() -> None:
    from servicekit.metrics import version

    assert tokengate("--version").stdout.strip() == f"tokengate {version()}"
    top = tokengate("--help").stdout
    assert "an auth gateway for private HTTP services" in top
    assert "one entry point, each package" not in top  # not the module's docstring
    for code, meaning in EXIT_CODES.items():
        assert f"{code:<4} {meaning}" in top


@pytest.mark.parametrize(
    ("command", "read"),
    [("gateway", GatewaySettings.from_env), ("backend", BackendSettings.from_env)],
)
def test_server_help_names_every_required_variable_and_the_defaults(
    command: str, read: Callable[[dict[str, str]], object]
) -> None:
    with pytest.raises(ConfigError) as caught:
        read({})
    required = {m.split()[0] for m in caught.value.messages}
    assert len(required) >= 2
    text = tokengate(command, "--help").stdout
    assert required <= set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", text)), required
    assert "(default: 127.0.0.1)" in text and "(default: 1)" in text
