"""Every operation of the served OpenAPI document, fuzzed with schemathesis against the real stack
(gateway and backend processes, PostgreSQL, Redis), authenticated.

Checks, chosen explicitly: no 5xx (``not_a_server_error``), and responses that match the document
in status code, content type and body schema. Cases come from both generation modes (valid and
invalid data). A run where every answer is a 401 or a 429 would prove nothing, so:

- the stack runs with loose rate limits and cheap argon2 parameters;
- every case carries a fresh session (access token, refresh cookie, an allowed ``Origin``);
- about half the cases are "anchored": the parts no generator can guess (the test user's
  credentials, the id of a note or session that exists) are replaced by real ones;
- each operation must have had at least one 2xx, or its test fails.

Generators keep to what the schema allows, and schemathesis never sends a lone surrogate, so a
third kind of case is "hostile": one path parameter, query parameter or body member (or the whole
body) of an anchored case is replaced by a value from the classes that broke services before
(issue 10): NUL, lone surrogates, non-ASCII digits, thousands of digits, encoded ``?``/``#``/``/``,
dot segments, paths past the 2048-byte cap, JSON nested thousands deep, plus arbitrary text. The
request is built by hand (raw JSON bytes, so lone surrogates travel as ``\ud800`` escapes) and
its response goes through the same checks.

Bounded: ``TOKENGATE_FUZZ_EXAMPLES`` cases per operation (default 15; well under a minute for the
whole file on a quiet 2-core machine). For a long campaign, raise it::

    TOKENGATE_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/contract -p no:randomly
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway import openapi
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("TOKENGATE_FUZZ_EXAMPLES", "15"))
# Operations that end or rotate the session they are called with: each case gets a new login.
# Every other case reuses one login per operation test.
SESSION_ENDING = {
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/auth/logout",
    "/api/v1/auth/logout-all",
    "/api/v1/auth/password",
    "/api/v1/auth/sessions/{session_id}",
}
ORIGIN = "http://localhost:5173"
PASSWORD = "contract fuzz correct horse battery"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# From the same document the gateway serves: collection needs no running server.
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in openapi.document()["paths"].items()
    for method in item
    if method != "parameters"
)


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env={
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            "LOGIN_RATE_LIMIT_IP": "1000000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000000/minute",
            "REFRESH_RATE_LIMIT": "1000000/minute",
            "LOG_LEVEL": "WARNING",
        },
        backend_env={
            "ARGON2_TIME_COST": "1",
            "ARGON2_MEMORY_KIB": "1024",
            "LOG_LEVEL": "WARNING",
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def schema(stack: Stack) -> Any:
    """The document as the running gateway serves it, loaded once, only when a test needs it."""
    return schemathesis.openapi.from_url(stack.gateway_url + openapi.PATH)


class Account:
    """The fuzzing user (an admin, so every route has a 2xx) and fresh sessions on demand."""

    def __init__(self, stack: Stack) -> None:
        self.email = f"fuzz-{uuid.uuid4().hex[:8]}@example.test"
        stack.create_user(self.email, PASSWORD, admin=True)
        self.http = httpx.Client(base_url=stack.gateway_url, timeout=30)

    def session(self) -> tuple[str, str, str]:
        """(access token, refresh token, session id) of a new login."""
        r = self.http.post("/api/v1/auth/login", json={"email": self.email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        access = r.json()["access_token"]
        payload = access.split(".")[1]
        sid = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"]
        refresh = r.cookies.get("tg_refresh")
        assert refresh, "the stack runs on plain-HTTP localhost: the cookie is tg_refresh"
        return access, refresh, sid

    def note_id(self, access: str) -> str:
        r = self.http.post(
            "/api/v1/notes",
            json={"title": "anchor", "body": "b"},
            headers={"Authorization": f"Bearer {access}"},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
def account(stack: Stack) -> Iterator[Account]:
    user = Account(stack)
    yield user
    user.http.close()


def _anchor(case: Any, account: Account, access: str, sid: str) -> None:
    """Replace what no generator can guess by real values."""
    # A generated DPoP header is a proof no generator can sign: anchored cases go as bearer.
    case.headers.pop("DPoP", None)
    if case.path == "/api/v1/auth/login":
        case.body = {"email": account.email, "password": PASSWORD}
        case.media_type = "application/json"
    elif case.path == "/api/v1/auth/password":
        # the same password again: the account keeps working for the cases after this one
        case.body = {"current_password": PASSWORD, "new_password": PASSWORD}
        case.media_type = "application/json"
    elif case.path in ("/api/v1/auth/refresh", "/api/v1/auth/logout"):
        case.body = NOT_SET  # cookie mode: the cookie and Origin are set on every case
        case.media_type = None
    if "note_id" in case.path_parameters:
        case.path_parameters["note_id"] = account.note_id(access)
    if "session_id" in case.path_parameters:
        case.path_parameters["session_id"] = sid


HOSTILE_TEXT = st.one_of(
    st.sampled_from(
        [
            "a\x00b@example.test",
            "\ud800",
            "x\udfffy",
            "\u00b2",
            "\u0663",
            "\uff11",
            "9" * 5000,
            "-0",
            "?x=1",
            "#frag",
            "..",
            ".",
            "%",
            "%2e%2e",
            "a/b",
            "\\",
            ";p=1",
            "x" * 3000,
            "\u202e\u0000",
            "",
        ]
    ),
    st.text(max_size=40),
)
DEEP_JSON = b"[" * 3000 + b"]" * 3000


def _hostile(case: Any, draw: Any) -> tuple[str, bytes | None]:
    """(URL path and query, raw body) of ``case`` with one part replaced by a hostile value."""
    targets = [("path", name) for name in case.path_parameters]
    targets += [("query", parameter.name) for parameter in case.operation.query or ()]
    body = case.body if isinstance(case.body, dict) else None
    if case.operation.body:
        # never new_password: a random one that passes would lock the fuzzing account out
        members = [n for n in (body or {"email": None, "title": None}) if n != "new_password"]
        targets += [("body", name) for name in members]
        targets.append(("deep", ""))
    where, name = draw(st.sampled_from(targets)) if targets else ("none", "")
    value = draw(HOSTILE_TEXT)
    path_parameters = dict(case.path_parameters)
    query = {k: v for k, v in (case.query or {}).items() if v is not None}
    if where == "path":
        path_parameters[name] = value
    elif where == "query":
        query[name] = value
    raw: bytes | None = None
    if where == "deep":
        raw = DEEP_JSON
    elif where == "body" or body is not None:
        fields = dict(body or {})
        if where == "body":
            fields[name] = value
        raw = json.dumps(fields, ensure_ascii=True).encode("ascii")

    def fill(match: re.Match[str]) -> str:
        text = str(path_parameters[match.group(1)])
        if text in (".", ".."):
            # httpx would resolve a dot segment before sending (RFC 3986 §5.2.4); encoded, the
            # gateway sees it (raw dot segments are sent by tests/e2e over a raw socket)
            return text.replace(".", "%2E")
        return quote(text.encode("utf-8", "surrogatepass"), safe="")

    url = re.sub(r"\{(\w+)\}", fill, case.path)
    if query:
        # by hand: httpx cannot encode a lone surrogate, and that is one of the values
        url += "?" + "&".join(
            f"{quote(str(k))}={quote(str(v).encode('utf-8', 'surrogatepass'), safe='')}"
            for k, v in query.items()
        )
    return url, raw


def _strategy(schema: Any, method: str, path: str) -> Any:
    operation = schema[path][method]
    strategies = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
    try:
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    except Exception:  # an operation with nothing to negate (no parameters, no body)
        pass
    return st.one_of(strategies)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_conforms_and_never_fails(
    stack: Stack, schema: Any, account: Account, method: str, path: str
) -> None:
    statuses: list[int] = []
    shared = account.session()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=_strategy(schema, method, path),
        kind=st.sampled_from(["generated", "anchored", "hostile"]),
        data=st.data(),
    )
    def run(case: Any, kind: str, data: st.DataObject) -> None:
        access, refresh, sid = account.session() if path in SESSION_ENDING else shared
        if kind != "generated":
            _anchor(case, account, access, sid)
        auth = {"Authorization": f"Bearer {access}", "Origin": ORIGIN}
        if kind == "hostile":
            url, raw = _hostile(case, data.draw)
            response: Any = account.http.request(
                method,
                url,
                content=raw,
                headers={
                    **auth,
                    "Cookie": f"tg_refresh={refresh}",
                    **({"Content-Type": "application/json"} if raw is not None else {}),
                },
            )
        else:
            response = case.call(
                base_url=stack.gateway_url,
                headers=auth,
                cookies={"tg_refresh": refresh},
                timeout=30,
            )
        statuses.append(response.status_code)
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:
            if kind == "hostile":
                # the reproduction schemathesis prints is the case before the hostile part
                sent = (raw or b"")[:200]
                exc.add_note(f"hostile request: {method} {url[:300]} body={sent!r}")
            raise

    run()
    assert any(200 <= s < 300 for s in statuses), (
        f"{method} {path}: no 2xx in {len(statuses)} cases ({sorted(set(statuses))})"
    )
