"""``tokengate keys generate``: files, modes, .env lines, secrets, and never clobbering."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest
from internal_auth import Minter, TokenScope, Verifier, load_private_key, load_public_keys

from tokengate import keys


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str], str]:
    parser = argparse.ArgumentParser(prog="tokengate")
    keys.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", "generate", *argv])
    status = args.func(args)
    out, err = capsys.readouterr()
    env = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return status, env, err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_env_lines_hold_a_working_key_pair(capsys: pytest.CaptureFixture[str]) -> None:
    status, env, _ = run(capsys)
    assert status == 0
    assert set(env) == {
        "INTERNAL_JWT_PRIVATE_KEY",
        "INTERNAL_JWT_PUBLIC_KEY",
        "JWT_ACCESS_SECRET",
        "JWT_REFRESH_SECRET",
    }
    assert "\n" not in env["INTERNAL_JWT_PRIVATE_KEY"]
    assert "\\n" in env["INTERNAL_JWT_PRIVATE_KEY"]
    private = load_private_key(env["INTERNAL_JWT_PRIVATE_KEY"])
    public = load_public_keys(env["INTERNAL_JWT_PUBLIC_KEY"])
    token = Minter(private, issuer="gw", audience="be").mint(
        sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me"
    )
    verifier = Verifier(public, issuer="gw", audience="be")
    assert verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me").sub == "u"


def test_the_two_secrets_are_strong_and_independent(capsys: pytest.CaptureFixture[str]) -> None:
    _, first, _ = run(capsys)
    _, second, _ = run(capsys)
    secrets = [first["JWT_ACCESS_SECRET"], first["JWT_REFRESH_SECRET"], second["JWT_ACCESS_SECRET"]]
    assert len(set(secrets)) == 3
    assert all(len(secret) >= 64 for secret in secrets)  # 48 random bytes, base64url


def test_out_writes_pem_files_with_a_private_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    status, env, _ = run(capsys, "--out", str(out))
    assert status == 0
    private_file = out / keys.PRIVATE_KEY_FILE
    public_file = out / keys.PUBLIC_KEY_FILE
    assert mode(private_file) == 0o600
    assert mode(public_file) == 0o644
    private = load_private_key(private_file.read_text())
    assert load_private_key(env["INTERNAL_JWT_PRIVATE_KEY"]).kid == private.kid
    assert load_public_keys(public_file.read_text()).kids == (private.kid,)


def test_existing_files_are_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "--out", str(tmp_path))
    before = (tmp_path / keys.PRIVATE_KEY_FILE).read_text()
    status, env, err = run(capsys, "--out", str(tmp_path))
    assert status == 1 and "--force" in err and env == {}
    assert (tmp_path / keys.PRIVATE_KEY_FILE).read_text() == before


def test_one_existing_file_blocks_writing_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / keys.PUBLIC_KEY_FILE).write_text("keep me")
    status, _, _ = run(capsys, "--out", str(tmp_path))
    assert status == 1
    assert not (tmp_path / keys.PRIVATE_KEY_FILE).exists()
    assert (tmp_path / keys.PUBLIC_KEY_FILE).read_text() == "keep me"


def test_force_replaces_and_restores_the_private_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "--out", str(tmp_path))
    private_file = tmp_path / keys.PRIVATE_KEY_FILE
    old = private_file.read_text()
    private_file.chmod(0o644)
    status, env, _ = run(capsys, "--out", str(tmp_path), "--force")
    assert status == 0
    assert private_file.read_text() != old
    assert mode(private_file) == 0o600
    assert load_private_key(private_file.read_text()).kid == (
        load_private_key(env["INTERNAL_JWT_PRIVATE_KEY"]).kid
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
