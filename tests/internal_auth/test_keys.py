"""Loading keys: PEM, the one-line .env form, JWKS, files; and everything that must be refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from internal_auth import (
    KeyLoadError,
    KeySet,
    PrivateKey,
    PublicKey,
    Reason,
    generate_private_key,
    load_private_key,
    load_private_key_file,
    load_public_keys,
    load_public_keys_file,
)


def private_pem(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: PrivateKeyTypes) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


OTHER_KEY_TYPES: dict[str, Callable[[], PrivateKeyTypes]] = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed448": ed448.Ed448PrivateKey.generate,
}


def test_private_pem_round_trip(key: PrivateKey) -> None:
    loaded = load_private_key(key.private_pem())
    assert loaded.kid == key.kid and loaded.public_pem() == key.public_pem()


def test_generated_keys_differ() -> None:
    assert generate_private_key().kid != generate_private_key().kid


@pytest.mark.parametrize(
    "wrap",
    [
        lambda pem: pem.replace("\n", "\\n"),  # the one-line .env form
        lambda pem: '"' + pem.replace("\n", "\\n") + '"',  # ... with the quotes kept
        lambda pem: pem.replace("\n", "\\r\\n"),
        lambda pem: pem.replace("\n", "\r\n"),
        lambda pem: "  \n" + pem + "\n\n",
    ],
    ids=["escaped", "quoted", "escaped-crlf", "crlf", "padded"],
)
def test_escaped_pem_is_normalised(key: PrivateKey, wrap: object) -> None:
    assert load_private_key(wrap(key.private_pem())).kid == key.kid  # type: ignore[operator]
    assert load_public_keys(wrap(key.public_pem())).kids == (key.kid,)  # type: ignore[operator]


def test_bytes_are_accepted(key: PrivateKey) -> None:
    assert load_private_key(key.private_pem().encode()).kid == key.kid


def test_a_public_key_cannot_be_loaded_as_a_signer(key: PrivateKey) -> None:
    with pytest.raises(KeyLoadError) as caught:
        load_private_key(key.public_pem())
    assert caught.value.reason is Reason.KEY_INVALID


def test_the_public_key_offers_no_way_to_sign(key: PrivateKey) -> None:
    public = key.public_key
    assert not [name for name in dir(public) if "sign" in name.lower()]
    with pytest.raises(KeyLoadError):
        PrivateKey(public._key)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(OTHER_KEY_TYPES))
def test_load_private_key_refuses_other_key_types(kind: str) -> None:
    with pytest.raises(KeyLoadError):
        load_private_key(private_pem(OTHER_KEY_TYPES[kind]()))


@pytest.mark.parametrize("kind", sorted(OTHER_KEY_TYPES))
def test_load_public_keys_refuses_other_key_types(kind: str) -> None:
    with pytest.raises(KeyLoadError):
        load_public_keys(public_pem(OTHER_KEY_TYPES[kind]()))


HMAC_JWK = json.dumps({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"})


def test_load_private_key_refuses_an_hmac_jwk() -> None:
    with pytest.raises(KeyLoadError, match="HMAC"):
        load_private_key(HMAC_JWK)


@pytest.mark.parametrize("document", [HMAC_JWK, json.dumps({"keys": [json.loads(HMAC_JWK)]})])
def test_load_public_keys_refuses_an_hmac_jwk(document: str) -> None:
    with pytest.raises(KeyLoadError, match="HMAC"):
        load_public_keys(document)


def test_load_public_keys_refuses_a_private_pem(key: PrivateKey) -> None:
    with pytest.raises(KeyLoadError, match="only public keys"):
        load_public_keys(key.private_pem())


def test_load_public_keys_refuses_a_private_pem_among_public_ones(key: PrivateKey) -> None:
    with pytest.raises(KeyLoadError, match="only public keys"):
        load_public_keys(key.public_pem() + key.private_pem())


def test_load_public_keys_refuses_a_private_jwk(key: PrivateKey) -> None:
    jwk = key.public_key.to_jwk() | {"d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}
    with pytest.raises(KeyLoadError, match="only public keys"):
        load_public_keys(json.dumps({"keys": [jwk]}))


def test_several_pem_blocks_make_a_key_set(key: PrivateKey, other_key: PrivateKey) -> None:
    keys = load_public_keys(key.public_pem() + other_key.public_pem())
    assert keys.kids == (key.kid, other_key.kid)


def test_jwks_round_trip(key: PrivateKey, other_key: PrivateKey) -> None:
    keys = KeySet([key.public_key, other_key.public_key])
    loaded = load_public_keys(json.dumps(keys.to_jwks()))
    assert loaded.kids == keys.kids
    assert loaded.get(key.kid) == key.public_key


def test_a_single_jwk_is_accepted(key: PrivateKey) -> None:
    assert load_public_keys(json.dumps(key.public_key.to_jwk())).kids == (key.kid,)


def test_a_jwk_whose_kid_is_not_its_thumbprint_is_refused(key: PrivateKey) -> None:
    jwk = key.public_key.to_jwk() | {"kid": "my-key-2024"}
    with pytest.raises(KeyLoadError, match="thumbprint"):
        load_public_keys(json.dumps(jwk))


@pytest.mark.parametrize(
    "text",
    ["", "   ", "not a key", "{not json", '{"keys": []}', "-----BEGIN PUBLIC KEY-----\nAAAA\n"],
)
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(KeyLoadError):
        load_public_keys(text)
    with pytest.raises(KeyLoadError):
        load_private_key(text)


def test_non_utf8_key_material_is_refused() -> None:
    with pytest.raises(KeyLoadError):
        load_private_key(b"\xff\xfe-----BEGIN PRIVATE KEY-----")


def test_key_files(tmp_path: Path, key: PrivateKey) -> None:
    (tmp_path / "private.pem").write_text(key.private_pem())
    (tmp_path / "public.pem").write_text(key.public_pem())
    assert load_private_key_file(tmp_path / "private.pem").kid == key.kid
    assert load_public_keys_file(tmp_path / "public.pem").kids == (key.kid,)
    with pytest.raises(KeyLoadError):
        load_private_key_file(tmp_path / "missing.pem")


def test_key_set_holds_public_keys_only(key: PrivateKey) -> None:
    with pytest.raises(KeyLoadError):
        KeySet([key])  # type: ignore[list-item]
    with pytest.raises(KeyLoadError):
        KeySet([])


def test_key_set_lookup(key: PrivateKey, other_key: PrivateKey) -> None:
    keys = KeySet([key.public_key])
    assert keys.get(key.kid) == key.public_key
    assert keys.get(other_key.kid) is None
    assert key.kid in keys and len(keys) == 1


def test_repr_shows_no_key_material(key: PrivateKey) -> None:
    body = key.private_pem().splitlines()[1]
    assert body not in repr(key) and repr(key) == f"PrivateKey(kid={key.kid!r})"


def test_jwk_has_the_rfc8037_members(key: PrivateKey) -> None:
    jwk = key.public_key.to_jwk()
    assert {jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]} == {"OKP", "Ed25519", "EdDSA", "sig"}
    assert "d" not in jwk
    assert isinstance(key.public_key, PublicKey)
