"""The signing key file: roles, bare PEM bundles, atomic writes, and a holder that keeps the last
good set (internal_auth.keyfile)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from internal_auth import (
    KeyHolder,
    KeyLoadError,
    KeySet,
    Minter,
    SigningKey,
    SigningKeys,
    TokenScope,
    Verifier,
    generate_private_key,
    write_key_file,
)

from tests.support.internal_auth_tokens import AUDIENCE, ISSUER


def test_a_bare_pem_key_is_the_active_signer() -> None:
    key = generate_private_key()
    keys = SigningKeys.parse(key.private_pem())
    assert keys.signer.kid == key.kid
    assert [k.role for k in keys] == ["active"]


def test_a_bare_bundle_signs_with_its_first_key_and_publishes_all() -> None:
    first, second = generate_private_key(), generate_private_key()
    keys = SigningKeys.parse(first.private_pem() + second.private_pem())
    assert keys.signer.kid == first.kid
    assert set(keys.public_keys.kids) == {first.kid, second.kid}


def test_the_one_line_env_form_is_accepted() -> None:
    key = generate_private_key()
    assert SigningKeys.parse(key.private_pem().replace("\n", "\\n")).signer.kid == key.kid


def test_roles_and_times_round_trip_through_the_file_text() -> None:
    active, upcoming = generate_private_key(), generate_private_key()
    keys = SigningKeys(
        (
            SigningKey(active, "active", staged=1_700_000_000, promoted=1_700_000_600),
            SigningKey(upcoming, "next", staged=1_700_001_000),
        )
    )
    again = SigningKeys.parse(keys.render())
    assert again.signer.kid == active.kid
    staged = again.role("next")
    assert staged is not None and staged.kid == upcoming.kid and staged.staged == 1_700_001_000
    assert again.role("active").promoted == 1_700_000_600  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ("role: next\n", "exactly one active"),
        ("role: boss\n", "not one of"),
        ("colour: blue\n", "unexpected line"),
        ("role: active\nrole: active\n", "given twice"),
        ("role: active\nstaged: yesterday\n", "not a UTC time"),
        ("role: active\nkid: not-its-thumbprint\n", "thumbprint"),
    ],
)
def test_a_bad_key_file_is_refused_with_a_reason(attributes: str, message: str) -> None:
    text = attributes + generate_private_key().private_pem()
    with pytest.raises(KeyLoadError, match=message):
        SigningKeys.parse(text)


def test_two_keys_of_one_role_and_the_same_key_twice_are_refused() -> None:
    a, b = generate_private_key(), generate_private_key()
    with pytest.raises(KeyLoadError, match="at most one next"):
        SigningKeys((SigningKey(a, "active"), SigningKey(b, "next"), SigningKey(b, "next")))
    with pytest.raises(KeyLoadError, match="twice"):
        SigningKeys((SigningKey(a, "active"), SigningKey(a, "previous")))


def test_a_public_key_or_no_key_is_not_a_key_file() -> None:
    with pytest.raises(KeyLoadError):
        SigningKeys.parse(generate_private_key().public_pem())
    with pytest.raises(KeyLoadError, match="no PRIVATE KEY"):
        SigningKeys.parse("# nothing here\n")


def test_errors_never_carry_key_material() -> None:
    pem = generate_private_key().private_pem()
    body = pem.splitlines()[1]
    with pytest.raises(KeyLoadError) as caught:
        SigningKeys.parse("role: boss\n" + pem)
    assert body not in str(caught.value)


def test_write_key_file_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    path.write_text("old")
    path.chmod(0o644)
    keys = SigningKeys.single(generate_private_key())
    write_key_file(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKeys.parse(path.read_text()).signer.kid == keys.signer.kid
    assert [p.name for p in tmp_path.iterdir()] == ["keys.pem"]


def test_the_holder_swaps_a_changed_file_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    first, second = generate_private_key(), generate_private_key()
    write_key_file(path, SigningKeys.single(first))
    holder = KeyHolder.from_file(path)
    assert holder.reload() is False  # unchanged
    write_key_file(path, SigningKeys.single(second))
    assert holder.reload() is True and holder.signer.kid == second.kid
    path.write_text(second.private_pem()[:100])  # a half-written file
    with pytest.raises(KeyLoadError):
        holder.reload()
    assert holder.signer.kid == second.kid


def test_a_minter_over_a_holder_signs_with_the_new_key_after_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    first, second = generate_private_key(), generate_private_key()
    write_key_file(path, SigningKeys.single(first))
    holder = KeyHolder.from_file(path)
    minter = Minter(holder, issuer=ISSUER, audience=AUDIENCE)
    verifier = Verifier(
        KeySet([first.public_key, second.public_key]),
        issuer=ISSUER,
        audience=AUDIENCE,
        replay_cache=None,
    )

    def signer_of() -> str:
        token = minter.mint(sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
        verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
        return minter.kid

    assert signer_of() == first.kid
    write_key_file(path, SigningKeys.single(second))
    holder.reload()
    assert signer_of() == second.kid
