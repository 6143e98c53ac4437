"""Property tests for the path mapper (gateway/proxy/paths.py): any raw path a client can send
either
maps under the backend's ``/v1/`` to a path the internal token can carry, or is a 4xx. Never an
escape, never an exception of another type, never a path the minter refuses (that was a 500)."""

from __future__ import annotations

from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st
from internal_auth import Minter, TokenScope, Verifier, generate_private_key
from internal_auth.tokens import MAX_TOKEN_LENGTH

from gateway.errors import GatewayError
from gateway.proxy.paths import BACKEND_PREFIX, MAX_PATH_BYTES, PUBLIC_PREFIX, backend_path

KEY = generate_private_key()
MINTER = Minter(KEY, issuer="tokengate-gateway", audience="tokengate-backend")
VERIFIER = Verifier(
    KEY.public_key, issuer="tokengate-gateway", audience="tokengate-backend", replay_cache=None
)

# Bytes that matter to path parsing, plus escapes of every byte value.
_ATOMS = st.one_of(
    st.sampled_from(["/", ".", "..", "%", "\\", ";", "?", "#", "~", "@", ":", "a", "auth", "v1"]),
    st.integers(0, 255).map(lambda b: f"%{b:02X}"),
    st.integers(0, 255).map(lambda b: f"%{b:02x}"),
    st.text(min_size=1, max_size=3),
)
_RAW = st.lists(_ATOMS, max_size=30).map("".join)


def _check(raw: bytes) -> None:
    try:
        decoded_path = unquote(raw.decode("latin-1"))
        mapped = backend_path(raw, decoded_path)
    except GatewayError as exc:
        assert 400 <= exc.status < 500
        return
    assert len(raw) <= MAX_PATH_BYTES
    assert mapped.raw.startswith(BACKEND_PREFIX) and mapped.path.startswith(BACKEND_PREFIX)
    assert mapped.raw == BACKEND_PREFIX + raw.decode("ascii")[len(PUBLIC_PREFIX) :]
    segments = mapped.path.split("/")
    assert ".." not in segments and "." not in segments and "" not in segments[1:]
    assert "?" not in mapped.path and "#" not in mapped.path and "\\" not in mapped.path
    assert segments[2] != "auth"  # the gateway's own routes never reach the backend
    # what the proxy does next must work: mint for this htu, and the backend verify it
    token = MINTER.mint(
        sub="7c6f7e39-2b0b-4a43-9a39-9d7b5f1f7e11",
        scope=TokenScope.USER_REQUEST,
        htm="PATCH",
        htu=mapped.path,
        roles=["user", "admin"],
        sid="0b8e0f3c-51d4-4b0c-a3a3-5f0e8d2f1c7a",
    )
    assert len(token) <= MAX_TOKEN_LENGTH
    VERIFIER.verify(token, scope=TokenScope.USER_REQUEST, htm="PATCH", htu=mapped.path)


@settings(max_examples=120)
@given(_RAW)
def test_any_path_under_the_public_prefix_maps_safely_or_is_a_4xx(rest: str) -> None:
    raw = (PUBLIC_PREFIX + rest).encode("utf-8", "surrogatepass")
    _check(raw)


@settings(max_examples=100)
@given(st.binary(max_size=60))
def test_any_bytes_as_a_path_map_safely_or_are_a_4xx(raw: bytes) -> None:
    _check(raw)
    _check(PUBLIC_PREFIX.encode() + raw)


@settings(max_examples=30)
@given(st.sampled_from(["a", "%F0%9F%98%80", "%22", "%C3%A9", "%E2%80%A8", "%7E"]), st.booleans())
def test_the_longest_allowed_path_still_fits_in_a_token(unit: str, over: bool) -> None:
    """Worst-case units at the cap: the token stays within the verifier's limit; one unit more
    and the path is refused (414) before any token is minted."""
    count = (MAX_PATH_BYTES - len(PUBLIC_PREFIX) - 2) // len(unit)
    raw = (PUBLIC_PREFIX + "x/" + unit * (count + (len(unit) + 1 if over else 0))).encode()
    _check(raw)
    if over:
        try:
            backend_path(raw, unquote(raw.decode()))
        except GatewayError as exc:
            assert exc.status == 414
        else:
            raise AssertionError("a path over the cap was accepted")
