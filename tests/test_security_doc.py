"""docs/SECURITY.md stays true: every threat-table row names tests that exist, and the token
table's JOSE headers are the ones the code writes (issue 10, finding 7)."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from internal_auth import Minter, TokenScope, generate_private_key

from gateway.auth.tokens import RefreshClaims, TokenService
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = DOC.index(f"## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else None]


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # the header row


THREATS = _section("Threat table")
ALIASES: dict[str, str] = dict(re.findall(r"`(\w+)/` = `([^`]+)`", THREATS))
ROWS = _table_rows(THREATS)


@cache
def _functions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )


def _resolve(reference: str) -> Path:
    head, _, rest = reference.partition("/")
    if head in ALIASES and (rest or "::" in reference):
        return ROOT / (ALIASES[head] + rest)
    return ROOT / reference


def _references(cell: str) -> list[tuple[Path, str | None]]:
    """``(file, test name or None)`` for every backticked reference in a cell; ``::name`` alone
    continues the file named before it, ``alias::name`` names a test in an aliased file, and a
    ``[case]`` suffix (or a cell of its own) names a parametrised case of that test."""
    out: list[tuple[Path, str | None]] = []
    current: Path | None = None
    for ref in re.findall(r"`([^`]+)`", cell):
        ref = re.sub(r"\[[^\]]*\]$", "", ref)  # a parametrised case: the test is what counts
        if not ref:
            continue  # `[another-case]` of the test named before it
        if ref.startswith("::"):
            assert current is not None, f"{ref} continues no file"
            out.append((current, ref[2:]))
            continue
        where, sep, name = ref.partition("::")
        if where in ALIASES and ALIASES[where].endswith(".py"):
            current = ROOT / ALIASES[where]
        else:
            current = _resolve(where)
        out.append((current, name if sep else None))
    return out


def test_the_table_has_rows_and_aliases() -> None:
    assert len(ROWS) > 20
    assert {"ia", "gw", "be", "e2e", "br", "input", "sk"} <= set(ALIASES)


@pytest.mark.parametrize("row", ROWS, ids=[row[0][:60] for row in ROWS])
def test_every_threat_row_names_tests_that_exist(row: list[str]) -> None:
    attack, _, proof = row
    references = _references(proof)
    assert references, f"row {attack!r} names no test"
    for path, name in references:
        assert path.is_file(), f"row {attack!r}: {path.relative_to(ROOT)} does not exist"
        if name is not None:
            assert name in _functions(path), (
                f"row {attack!r}: no test {name} in {path.relative_to(ROOT)}"
            )


def _jose_header(token: str) -> dict[str, object]:
    segment = token.split(".")[0]
    header: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return header


def _documented_typ(token: str) -> str:
    for row in _table_rows(_section("Tokens")):
        if row[0] == token:
            match = re.search(r"`typ: ([^`]+)`", row[2])
            assert match, f"no typ for {token} in the token table"
            return match.group(1)
    raise AssertionError(f"{token} is not in the token table")


def test_the_token_table_shows_the_jose_typ_the_code_writes() -> None:
    key = generate_private_key()
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://unused",
            "REDIS_URL": "redis://unused",
            "BACKEND_URL": "http://unused",
            "JWT_ACCESS_SECRET": "a" * 40,
            "JWT_REFRESH_SECRET": "r" * 40,
            "INTERNAL_JWT_PRIVATE_KEY": key.private_pem(),
        }
    )
    tokens = TokenService(settings)
    access, claims = tokens.issue_access(sub="u", sid="s", roles=["user"])
    refresh = tokens.encode_refresh(
        RefreshClaims(sub="u", sid="s", jti="j", iat=claims.iat, exp=claims.exp)
    )
    internal = Minter(key, issuer="i", audience="a").mint(
        sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me"
    )
    assert _jose_header(access)["typ"] == _documented_typ("access")
    assert _jose_header(refresh)["typ"] == _documented_typ("refresh")
    assert _jose_header(internal)["typ"] == _documented_typ("internal")


def _key_pair_commands() -> list[list[str]]:
    """The deployment checklist's key-pair check, as the commands it runs in each container."""
    block = DOC.split("<!-- key-pair-check -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.strip().splitlines():
        _, _, command = line.strip().partition("docker compose exec ")
        service, _, rest = command.partition(" ")
        assert service in ("gateway", "backend") and rest.startswith("python -c '"), line
        commands.append([sys.executable, "-c", rest.removeprefix("python -c '").removesuffix("'")])
    return commands


def test_the_key_pair_check_prints_one_kid_for_a_pair_and_two_for_a_mismatch() -> None:
    gateway_check, backend_check = _key_pair_commands()
    key, other = generate_private_key(), generate_private_key()

    def run(command: list[str], **env: str) -> str:
        done = subprocess.run(
            command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    gateway_kid = run(gateway_check, INTERNAL_JWT_PRIVATE_KEY=key.private_pem())
    assert gateway_kid == key.kid
    assert run(backend_check, INTERNAL_JWT_PUBLIC_KEY=key.public_pem()) == gateway_kid
    assert run(backend_check, INTERNAL_JWT_PUBLIC_KEY=other.public_pem()) != gateway_kid
