"""servicekit.bodies: the one body reader both services use (framing, limit, media type, JSON).

Property tests feed arbitrary bytes and header values: the only exception that may come out is
:class:`BodyError` (a 4xx), and whatever is accepted satisfies every promise of the module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servicekit.bodies import (
    DEFAULT_MAX_DEPTH,
    BodyError,
    InvalidJson,
    MalformedFraming,
    PayloadTooLarge,
    UnsupportedMediaType,
    framing,
    is_json_media_type,
    parse_json,
    read_json,
    refuse_foreign_body,
)
from starlette.datastructures import Headers

JSON_HEADERS = [(b"content-type", b"application/json")]


# -- framing: one answer for every Content-Length ---------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"", b"-1", b"+1", b" 1", b"1 ", b"0x10", b"1,1", b"\xc2\xb2", b"1.0", b"1e3", b"abc"],
)
def test_a_malformed_content_length_is_400(value: bytes) -> None:
    with pytest.raises(MalformedFraming) as caught:
        framing([(b"content-length", value)])
    assert caught.value.status == 400


def test_a_content_length_of_many_digits_is_413_before_any_int_conversion() -> None:
    with pytest.raises(PayloadTooLarge):
        framing([(b"content-length", b"9" * 5000)])


def test_two_different_content_lengths_are_400_and_two_equal_ones_are_one() -> None:
    with pytest.raises(MalformedFraming):
        framing([(b"content-length", b"1"), (b"content-length", b"2")])
    assert framing([(b"content-length", b"3"), (b"content-length", b"3")]).length == 3


def test_transfer_encoding_wins_over_content_length() -> None:
    result = framing(
        [(b"content-length", b"99999999"), (b"transfer-encoding", b"chunked")], limit=1
    )
    assert result.chunked and result.length is None


def test_a_declared_length_over_the_limit_is_413_naming_the_limit() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        framing([(b"content-length", b"11")], limit=10)
    assert caught.value.status == 413 and "10 bytes" in caught.value.message
    assert framing([(b"content-length", b"10")], limit=10).length == 10


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=2**40))
def test_framing_of_any_content_length_is_a_number_or_a_body_error(
    value: bytes, limit: int
) -> None:
    try:
        result = framing([(b"content-length", value)], limit=limit)
    except BodyError as exc:
        assert exc.status in (400, 413)
        return
    assert result.length is not None and 0 <= result.length <= limit
    assert value.isdigit() and value.isascii() and int(value) == result.length


# -- media type -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'application/json;charset="UTF-8"',
    ],
)
def test_json_media_types_accepted(value: str) -> None:
    assert is_json_media_type(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json; charset=latin-1",
        "application/jsonx",
        "application/json; boundary=x",
        "text/json",
    ],
)
def test_other_media_types_refused(value: str | None) -> None:
    assert not is_json_media_type(value)


def test_a_body_on_an_endpoint_that_reads_none_must_still_be_json() -> None:
    refuse_foreign_body([])
    refuse_foreign_body([(b"content-length", b"0"), (b"content-type", b"text/plain")])
    refuse_foreign_body([(b"content-length", b"2"), *JSON_HEADERS])
    with pytest.raises(UnsupportedMediaType):
        refuse_foreign_body([(b"content-length", b"2"), (b"content-type", b"text/plain")])
    with pytest.raises(UnsupportedMediaType):
        refuse_foreign_body([(b"transfer-encoding", b"chunked")])


# -- strict JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"a": "\ud800"}',
        rb'{"a": "\udc00x"}',
        rb'{"\u0000": 1}',
        rb'{"a": ["x\u0000"]}',
        b'{"a": 1, "a": 2}',
        b"NaN",
        b'{"a": Infinity}',
        b"1e999",
        b"[" * 2000 + b"]" * 2000,
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{}",
        b"9" * 5000,
        b"",
    ],
)
def test_strict_json_refuses(raw: bytes) -> None:
    with pytest.raises(InvalidJson) as caught:
        parse_json(raw)
    assert caught.value.status == 400


def test_strict_json_accepts_real_pairs_and_moderate_depth() -> None:
    assert parse_json(rb'{"a": "\ud83d\ude00"}') == {"a": "\U0001f600"}
    nested = b"[" * DEFAULT_MAX_DEPTH + b"]" * DEFAULT_MAX_DEPTH
    assert parse_json(nested) is not None
    with pytest.raises(InvalidJson):
        parse_json(b"[" + nested + b"]")


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    assert parse_json(b'{"a": "' + b"[" * 1000 + b'\\"{{{"}') == {"a": "[" * 1000 + '"{{{'}


def _walk_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_walk_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _walk_strings(item)]
    return []


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _clean(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_any_bytes_parse_to_clean_json_or_a_body_error(raw: bytes) -> None:
    try:
        value = parse_json(raw)
    except BodyError as exc:
        assert exc.status == 400
        return
    assert all(_clean(s) for s in _walk_strings(value))
    assert _depth(value) <= DEFAULT_MAX_DEPTH


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=150)
@given(_json_values)
def test_json_that_python_writes_parses_back_or_is_refused_for_a_stated_reason(value: Any) -> None:
    raw = json.dumps(value).encode()
    try:
        parsed = parse_json(raw)
    except InvalidJson:
        strings = _walk_strings(value)
        assert (
            not all(_clean(s) for s in strings)
            or _depth(value) > DEFAULT_MAX_DEPTH
            or ("Infinity" in raw.decode())
        )
        return
    assert parsed == value


# -- read_json over a request ---------------------------------------------------------------------


class _Request:
    def __init__(self, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> None:
        self.headers = Headers(raw=headers)
        self._chunks = chunks

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


async def test_read_json_checks_media_type_before_reading() -> None:
    with pytest.raises(UnsupportedMediaType):
        await read_json(_Request([(b"content-type", b"text/plain")], [b"{}"]), limit=10)


async def test_read_json_stops_a_body_growing_past_the_limit() -> None:
    request = _Request([*JSON_HEADERS, (b"transfer-encoding", b"chunked")], [b"[1,", b"2]" * 50])
    with pytest.raises(PayloadTooLarge):
        await read_json(request, limit=16)


async def test_read_json_refuses_a_lying_content_length() -> None:
    request = _Request([*JSON_HEADERS, (b"content-length", b"2")], [b'{"a": 123456789}'])
    with pytest.raises(PayloadTooLarge):
        await read_json(request, limit=8)
