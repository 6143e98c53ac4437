"""Path confusion, as a property (issue 20): every path gateway/proxy/paths.py accepts gets the
same decision as its forwarded form, and as every other spelling of it a client could send.

A policy decides on the decoded canonical path that the internal token binds (``htu`` minus
``/v1``). Here, for any accepted raw path: the route and decision the gateway took equal those
taken on the path the service decodes from what was forwarded (``unquote`` of the wire path, as
uvicorn does), and equal those of the same path spelled with every other character escaped or
not: no encoding can move a request from a deny rule to an allow rule, or to another service
(Envoy CVE-2019-9901 and CVE-2021-29492, escaped slashes and dots read two ways)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.policy import Caller, load_policy
from gateway.proxy.paths import BACKEND_PREFIX, backend_path

POLICY = load_policy(str(Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"))
CALLERS = (
    None,
    Caller("u1", frozenset({"user"})),
    Caller("root", frozenset({"user", "admin"})),
)
METHODS = ("GET", "HEAD", "PUT", "DELETE", "POST", "PATCH")

# Segments the example policy names, their neighbours, and what paths.py must stop.
_SEGMENT = st.one_of(
    st.sampled_from(
        ["files", "docs", "public", "notes", "me", "users", "filesystem", "a", "auth", "v1"]
    ),
    st.sampled_from([".", "..", "", "%2e", "%2f", "%2F", "%5c", "%25", "%00", ";x", "a%20b"]),
    st.text(alphabet="abcdefilnoprstu%2F5e.", min_size=1, max_size=6),
)
# Mostly under the prefixes the rules name, so most cases reach an allow or a deny rule.
_HEADS = st.sampled_from(
    ["files/docs", "files/public", "files", "notes", "me", "users", "f%69les/docs", "n%6Ftes"]
)
_PATH = st.one_of(
    st.tuples(_HEADS, st.lists(_SEGMENT, max_size=4)).map(
        lambda p: "/api/v1/" + "/".join([p[0], *p[1]])
    ),
    st.lists(_SEGMENT, min_size=1, max_size=6).map(lambda s: "/api/v1/" + "/".join(s)),
)


def _decisions(path: str) -> list[tuple[str | None, bool, str | None]]:
    out = []
    service = POLICY.service_for(path)
    for method in METHODS:
        for caller in CALLERS:
            decision = POLICY.decide(method, path, caller)
            out.append((service, decision.allowed, decision.rule))
    return out


def _respell(path: str, mask: int) -> str:
    """The same decoded path with some unreserved characters percent-encoded."""
    out = []
    for i, char in enumerate(path):
        if char != "/" and (mask >> (i % 60)) & 1:
            out.append(quote(char, safe="") if not char.isalnum() else f"%{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(raw=_PATH, mask=st.integers(0, 2**60 - 1))
def test_an_accepted_path_gets_the_decision_of_its_forwarded_form(raw: str, mask: int) -> None:
    try:
        target = backend_path(raw.encode("ascii"), unquote(raw))
    except (GatewayError, UnicodeEncodeError):
        return  # refused before any policy work: nothing to confuse
    decided_on = target.rule_path  # what the proxy handler decides on
    # what the service decodes from the wire is what the gateway decided on
    forwarded = unquote(target.raw, errors="strict")
    assert forwarded == target.path
    assert _decisions(forwarded[len(BACKEND_PREFIX) - 1 :]) == _decisions(decided_on)
    # every other spelling of the same path that paths.py accepts is decided the same way
    respelled = "/api/v1/" + _respell(target.raw[len(BACKEND_PREFIX) :], mask)
    try:
        again = backend_path(respelled.encode("ascii"), unquote(respelled))
    except GatewayError:
        return
    assert again.path == target.path
    assert _decisions(again.rule_path) == _decisions(decided_on)
