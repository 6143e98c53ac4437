"""The client address and scheme behind proxies: one set of rules, tried with the attacks."""

from __future__ import annotations

import ipaddress

import pytest
from servicekit.forwarded import (
    UNKNOWN,
    Network,
    client_and_scheme,
    client_ip,
    forwarded_for,
    is_trusted,
    request_scheme,
)

TRUSTED: tuple[Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("2001:db8:ffff::/48"),
)


def _xff(*fields: str) -> bytes | None:
    return forwarded_for([(b"x-forwarded-for", f.encode("latin-1")) for f in fields])


@pytest.mark.parametrize(
    ("peer", "fields", "trusted", "expected"),
    [
        # Honest cases.
        ("203.0.113.7", [], (), "203.0.113.7"),
        ("10.0.0.2", ["1.2.3.4"], TRUSTED, "1.2.3.4"),
        ("10.0.0.2", ["1.2.3.4, 10.0.0.3"], TRUSTED, "1.2.3.4"),
        ("10.0.0.2", ["2001:db8::1"], TRUSTED, "2001:db8::1"),
        ("10.0.0.2", [], TRUSTED, "10.0.0.2"),
        # Every hop is ours: the left-most is as far back as the chain goes.
        ("10.0.0.2", ["10.0.0.5, 10.0.0.3"], TRUSTED, "10.0.0.5"),
        (None, [], (), UNKNOWN),
        (None, ["1.2.3.4"], TRUSTED, UNKNOWN),
    ],
)
def test_client_ip(
    peer: str | None, fields: list[str], trusted: tuple[Network, ...], expected: str
) -> None:
    assert client_ip(peer, _xff(*fields), trusted) == expected


@pytest.mark.parametrize(
    ("peer", "fields", "trusted", "expected"),
    [
        # A client talking to us directly picks its own address: ignored.
        ("203.0.113.7", ["1.2.3.4"], (), "203.0.113.7"),
        ("203.0.113.7", ["1.2.3.4"], TRUSTED, "203.0.113.7"),
        # A client prepends hops of its own: the right-most untrusted hop still wins.
        ("10.0.0.2", ["6.6.6.6, 1.2.3.4, 10.0.0.3"], TRUSTED, "1.2.3.4"),
        # A client names one of our own proxies to be skipped over: that only moves the answer
        # to the hop our proxy wrote, never to one the client chose.
        ("10.0.0.2", ["6.6.6.6, 10.0.0.9, 1.2.3.4"], TRUSTED, "1.2.3.4"),
        # Its own X-Forwarded-For field first, the proxy's appended as a second field: both are
        # one list (RFC 9110 §5.3), so the first field cannot shadow the second.
        ("10.0.0.2", ["6.6.6.6", "1.2.3.4"], TRUSTED, "1.2.3.4"),
        # Not an address (a name, ip:port, markup, a log-injection attempt): the peer, never
        # the string, or every new string would be a fresh rate-limit bucket.
        ("10.0.0.2", ["not-an-ip"], TRUSTED, "10.0.0.2"),
        ("10.0.0.2", ["1.2.3.4:5678"], TRUSTED, "10.0.0.2"),
        ("10.0.0.2", ["[2001:db8::1]"], TRUSTED, "10.0.0.2"),
        ("10.0.0.2", ["<script>"], TRUSTED, "10.0.0.2"),
        ("10.0.0.2", ["1.2.3.4\r\nX-Evil: 1"], TRUSTED, "10.0.0.2"),
        ("10.0.0.2", ["evil, 10.0.0.3"], TRUSTED, "10.0.0.2"),
        # Leading zeros are ambiguous (octal in some parsers) and rejected by ipaddress.
        ("10.0.0.2", ["001.002.003.004"], TRUSTED, "10.0.0.2"),
        # Empty or blank lists.
        ("10.0.0.2", [" , ,"], TRUSTED, "10.0.0.2"),
        ("10.0.0.2", [""], TRUSTED, "10.0.0.2"),
        # A peer that is not an address is never a trusted proxy.
        ("testclient", ["1.2.3.4"], TRUSTED, "testclient"),
    ],
)
def test_client_ip_attacks(
    peer: str, fields: list[str], trusted: tuple[Network, ...], expected: str
) -> None:
    assert client_ip(peer, _xff(*fields), trusted) == expected


@pytest.mark.parametrize(
    "spelling", ["2001:DB8::1", "2001:db8:0:0::1", "2001:0db8:0000:0000:0000:0000:0000:0001"]
)
def test_one_client_has_one_spelling(spelling: str) -> None:
    # Otherwise an IPv6 client would get a fresh rate-limit bucket per spelling of its address.
    assert client_ip("10.0.0.2", _xff(spelling), TRUSTED) == "2001:db8::1"


def test_forwarded_for_joins_every_field_in_order() -> None:
    headers = [
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"host", b"x"),
        (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
    ]
    assert forwarded_for(headers) == b"1.1.1.1,2.2.2.2, 3.3.3.3"
    assert forwarded_for([(b"host", b"x")]) is None


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.1.2.3", True), ("11.0.0.1", False), ("2001:db8:ffff::9", True), ("nope", False)],
)
def test_is_trusted(address: str, expected: bool) -> None:
    assert is_trusted(address, TRUSTED) is expected


@pytest.mark.parametrize(
    ("peer", "proto", "trusted", "expected"),
    [
        ("10.0.0.2", b"https", TRUSTED, "https"),
        ("10.0.0.2", b"HTTPS, http", TRUSTED, "https"),
        ("203.0.113.7", b"https", TRUSTED, "http"),  # not a trusted proxy: ignored
        ("10.0.0.2", b"https", (), "http"),
        ("10.0.0.2", b"gopher", TRUSTED, "http"),
        ("10.0.0.2", None, TRUSTED, "http"),
        (None, b"https", TRUSTED, "http"),
    ],
)
def test_request_scheme(
    peer: str | None, proto: bytes | None, trusted: tuple[Network, ...], expected: str
) -> None:
    assert request_scheme("http", peer, proto, trusted) == expected


BOTH = [(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https")]


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "expected"),
    [
        # Nothing trusted: no header is read, whatever it says.
        (
            "203.0.113.7",
            BOTH,
            (),
            ("203.0.113.7", "http"),
        ),
        # A peer that is not a trusted proxy is not believed either.
        (
            "203.0.113.7",
            BOTH,
            TRUSTED,
            ("203.0.113.7", "http"),
        ),
        (
            "10.0.0.2",
            BOTH,
            TRUSTED,
            ("1.2.3.4", "https"),
        ),
        ("10.0.0.2", [(b"x-forwarded-for", b"nope")], TRUSTED, ("10.0.0.2", "http")),
        (None, [(b"x-forwarded-for", b"1.2.3.4")], TRUSTED, (UNKNOWN, "http")),
    ],
)
def test_client_and_scheme(
    peer: str | None,
    headers: list[tuple[bytes, bytes]],
    trusted: tuple[Network, ...],
    expected: tuple[str, str],
) -> None:
    assert client_and_scheme(peer, "http", headers, trusted) == expected
