"""gateway/policy, as units: the route table, the rule set, and the file's validation with the
line, key and value of every problem (issue 20). The same decisions through HTTP are in
tests/gateway/test_policy_proxy.py and, with real processes, tests/e2e/test_multiservice_e2e.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.policy import Caller, Policy, PolicyFileError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gateway.toml"

HEAD = """
version = 1
[services.backend]
url = "http://backend:8001"
audience = "tokengate-backend"
[services.files]
url = "http://files:8002"
audience = "tokengate-files"
"""

ALICE = Caller("alice", frozenset({"user"}))
ADMIN = Caller("root", frozenset({"user", "admin"}))


def policy(body: str) -> Policy:
    return parse_policy((HEAD + textwrap.dedent(body)).encode())


def problems(text: str, name: str = "gateway.toml") -> list[str]:
    with pytest.raises(PolicyFileError) as failed:
        parse_policy(textwrap.dedent(text).encode(), name)
    return failed.value.problems


def test_routes_match_the_longest_prefix_on_segment_boundaries() -> None:
    table = policy(
        """
        [[route]]
        prefix = "/files"
        service = "files"
        [[route]]
        prefix = "/files/archive/old"
        service = "backend"
        [[route]]
        prefix = "/pub"
        service = "files"
        """
    )
    assert table.service_for("/files") == "files"
    assert table.service_for("/files/x/y") == "files"
    assert table.service_for("/files/archive/old/z") == "backend"
    assert table.service_for("/files/archive/older") == "files"
    # Calico's bug: a string prefix "/pub" matching "/public-leak"
    assert table.service_for("/public-leak") is None
    assert table.service_for("/filesystem") is None
    catch_all = policy(
        '[[route]]\nprefix = "/"\nservice = "backend"\n'
        '[[route]]\nprefix = "/files"\nservice = "files"\n'
    )
    assert catch_all.service_for("/filesystem") == "backend"
    assert catch_all.service_for("/files/a") == "files"


def test_deny_overrides_allow_whatever_the_order() -> None:
    for order in ("allow-first", "deny-first"):
        allow = '[[rule]]\nname = "all"\neffect = "allow"\nauthenticated = true\n'
        deny = '[[rule]]\nname = "no-delete"\neffect = "deny"\nmethods = ["DELETE"]\n'
        table = policy(allow + deny if order == "allow-first" else deny + allow)
        assert table.decide("GET", "/notes/1", ALICE).allowed
        assert not table.decide("DELETE", "/notes/1", ALICE).allowed
        assert not table.decide("DELETE", "/notes/1", ADMIN).allowed
        # the deny rule is named for the gateway's log; nothing matching names none
        assert table.decide("DELETE", "/notes/1", ALICE).rule == "no-delete"


def test_nothing_matching_is_denied() -> None:
    table = policy(
        '[[rule]]\nname = "me"\neffect = "allow"\nmethods = ["GET"]\n'
        'paths = ["/me"]\nauthenticated = true\n'
    )
    assert table.decide("GET", "/me", ALICE).rule == "me"
    assert not table.decide("GET", "/users", ALICE).allowed
    assert not table.decide("POST", "/me", ALICE).allowed
    assert not table.decide("GET", "/me", None).allowed
    assert not policy("").decide("GET", "/me", ADMIN).allowed


def test_get_implies_head_and_methods_are_exact() -> None:
    table = policy(
        '[[rule]]\nname = "r"\neffect = "allow"\nmethods = ["GET"]\nauthenticated = true\n'
    )
    assert table.decide("HEAD", "/a", ALICE).allowed
    assert not table.decide("get", "/a", ALICE).allowed
    assert not table.decide("OPTIONS", "/a", ALICE).allowed
    head_only = policy(
        '[[rule]]\nname = "h"\neffect = "allow"\nmethods = ["HEAD"]\nauthenticated = true\n'
    )
    assert not head_only.decide("GET", "/a", ALICE).allowed


def test_one_star_is_one_segment_and_a_trailing_double_star_any_number() -> None:
    table = policy(
        """
        [[rule]]
        name = "one"
        effect = "allow"
        paths = ["/notes/*/tags"]
        authenticated = true
        [[rule]]
        name = "tree"
        effect = "allow"
        paths = ["/docs/**"]
        authenticated = true
        """
    )
    assert table.decide("GET", "/notes/7/tags", ALICE).rule == "one"
    assert not table.decide("GET", "/notes/7/8/tags", ALICE).allowed
    assert not table.decide("GET", "/notes/tags", ALICE).allowed
    assert table.decide("GET", "/docs", ALICE).rule == "tree"
    assert table.decide("GET", "/docs/a/b/c", ALICE).rule == "tree"
    assert not table.decide("GET", "/docsx", ALICE).allowed
    # case sensitive, exact segments
    assert not table.decide("GET", "/Docs/a", ALICE).allowed


def test_identity_criteria() -> None:
    table = policy(
        """
        [[rule]]
        name = "any-admin"
        effect = "allow"
        paths = ["/a"]
        roles_any = ["admin", "ops"]
        [[rule]]
        name = "both"
        effect = "allow"
        paths = ["/b"]
        roles_all = ["admin", "user"]
        [[rule]]
        name = "alice-only"
        effect = "allow"
        paths = ["/c"]
        users = ["alice"]
        """
    )
    assert table.decide("GET", "/a", ADMIN).allowed and not table.decide("GET", "/a", ALICE).allowed
    assert table.decide("GET", "/b", ADMIN).allowed
    assert not table.decide("GET", "/b", Caller("x", frozenset({"admin"}))).allowed
    assert table.decide("GET", "/c", ALICE).allowed and not table.decide("GET", "/c", ADMIN).allowed
    assert not table.decide("GET", "/c", None).allowed


def test_public_rules_admit_anonymous_callers_and_deny_still_wins() -> None:
    table = policy(
        """
        [[rule]]
        name = "pub"
        effect = "allow"
        methods = ["GET"]
        paths = ["/pub/**"]
        public = true
        [[rule]]
        name = "hide"
        effect = "deny"
        paths = ["/pub/secret"]
        [[rule]]
        name = "admins-only"
        effect = "deny"
        paths = ["/pub/staff"]
        roles_any = ["admin"]
        """
    )
    assert table.decide("GET", "/pub/a", None).rule == "pub"
    assert table.decide("GET", "/pub/a", ALICE).rule == "pub"
    assert not table.decide("POST", "/pub/a", None).allowed
    assert not table.decide("GET", "/pub/secret", None).allowed
    assert not table.decide("GET", "/pub/secret", ADMIN).allowed
    # a deny rule that needs a user never matches an anonymous caller
    assert table.decide("GET", "/pub/staff", None).allowed
    assert not table.decide("GET", "/pub/staff", ADMIN).allowed


def test_the_example_file_loads_and_decides_as_documented() -> None:
    table = load_policy(str(EXAMPLE))
    assert table.identity == "backend"
    assert {name: s.audience for name, s in table.services.items()} == {
        "backend": "tokengate-backend",
        "files": "tokengate-files",
    }
    assert table.service_for("/files/docs/a") == "files"
    assert table.service_for("/notes") == "backend"
    assert table.decide("GET", "/files/public/a", None).rule == "files-public"
    assert table.decide("GET", "/files/docs/a", ALICE).rule == "files-read"
    assert not table.decide("PUT", "/files/docs/a", ALICE).allowed
    assert table.decide("PUT", "/files/docs/a", ADMIN).rule == "files-admin-write"
    assert not table.decide("DELETE", "/files/docs/a", ADMIN).allowed
    assert not table.decide("GET", "/users", ALICE).allowed
    assert table.decide("GET", "/users", ADMIN).rule == "admin-users"


def test_lookup_does_not_scan_every_rule() -> None:
    body = "".join(
        f'[[rule]]\nname = "r{i}"\neffect = "allow"\nmethods = ["GET"]\n'
        f'paths = ["/svc{i}/**"]\nauthenticated = true\n'
        for i in range(1000)
    )
    table = policy(body)
    assert table.decide("GET", "/svc500/x", ALICE).rule == "r500"
    # only the rules whose trie nodes the path reaches are candidates
    assert table._candidates("GET", "/svc500/x") == (500,)
    assert table._candidates("POST", "/svc500/x") == ()


BAD = """\
version = 1
identity = "users"
colour = "blue"

[services.backend]
url = "http://backend:8001"
audience = "tokengate-backend"
timeout = 3

[services.files]
url = "ftp://files"
audience = "tokengate-backend"

[[route]]
prefix = "/files/"
service = "files"

[[route]]
prefix = "/auth"
service = "backend"

[[route]]
prefix = "/x"
service = "nosuch"

[[rule]]
name = "a"
effect = "allow"
methods = ["get"]
paths = [
  "/ok/**",
  "/a//b",
  "/a/../b",
  "/a/%2f",
  "/trailing/",
  "/auth/login",
  "/x/**/y",
  "/x*",
]
authenticated = true

[[rule]]
name = "a"
effect = "permit"
pathz = ["/z"]

[[rule]]
name = "deletes"
effect = "allow"
methods = ["DELETE"]
paths = ["/files/docs/**"]
roles_any = ["admin"]

[[rule]]
name = "no-deletes"
effect = "deny"
methods = ["DELETE"]
paths = ["/files/**"]
"""


def test_every_problem_is_one_line_naming_file_line_key_and_value() -> None:
    found = problems(BAD)
    expected = [
        'gateway.toml:2: identity "users" is not a service',
        'gateway.toml:3: colour "blue" is not a known key',
        'gateway.toml:8: services.backend.timeout "3" is not a known key',
        'gateway.toml:11: services.files.url "ftp://files" is not usable',
        'gateway.toml:12: services.files.audience "tokengate-backend" is also service',
        'gateway.toml:15: route.prefix "/files/" has an empty segment',
        'gateway.toml:19: route.prefix "/auth" is under /auth',
        'gateway.toml:24: route.service "nosuch" is not a service',
        'gateway.toml:29: rule.methods "get" is not an upper-case HTTP method',
        'gateway.toml:32: rule.paths "/a//b" has an empty segment',
        'gateway.toml:33: rule.paths "/a/../b" has a dot segment',
        "gateway.toml:34: rule.paths \"/a/%2f\" has '%'",
        'gateway.toml:35: rule.paths "/trailing/" has an empty segment',
        'gateway.toml:36: rule.paths "/auth/login" is under /auth',
        "gateway.toml:37: rule.paths \"/x/**/y\" has '**' before the end",
        "gateway.toml:38: rule.paths \"/x*\" has '*' inside a segment",
        'gateway.toml:43: rule.name "a" is a duplicate (first on line 27)',
        'gateway.toml:44: rule.effect "permit" must be "allow" or "deny"',
        'gateway.toml:45: rule.pathz "[\\"/z\\"]" is not a known key',
        "gateway.toml:48: rule.name \"deletes\" can never allow anything: deny rule 'no-deletes'",
    ]
    assert len(found) == len(expected), "\n".join(found)
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), (line, want)


def test_shadowing_is_only_reported_when_certain() -> None:
    # a deny that needs a role does not shadow an allow any user gets
    policy(
        """
        [[rule]]
        name = "read"
        effect = "allow"
        paths = ["/a/**"]
        authenticated = true
        [[rule]]
        name = "no-admins"
        effect = "deny"
        paths = ["/a/**"]
        roles_any = ["admin"]
        """
    )
    with pytest.raises(PolicyFileError, match="can never allow"):
        policy(
            """
            [[rule]]
            name = "admins"
            effect = "allow"
            methods = ["GET"]
            paths = ["/a/*/b"]
            roles_all = ["admin"]
            [[rule]]
            name = "no-a"
            effect = "deny"
            paths = ["/a/**"]
            authenticated = true
            """
        )


def test_structure_problems() -> None:
    assert problems("") == [
        'gateway.toml:1: version "" is missing (write version = 1)',
        'gateway.toml:1: services "" must name at least one [services.NAME] table',
        'gateway.toml:1: identity "backend" is not a service',
    ]
    assert problems("version = 1\n[services.backend]\nurl = \n")[0].startswith(
        'gateway.toml:3: toml "url =" is not valid TOML'
    )
    both = problems(
        HEAD.replace(
            'audience = "tokengate-files"',
            'audience = "tokengate-files"\nclient_cert_file = "/nonexistent"',
        )
    )
    assert any(
        'services.files.client_cert_file "/nonexistent" is not a readable file' in p for p in both
    )
    assert any("needs both client_cert_file and client_key_file" in p for p in both)
    public = problems(
        HEAD + '[[rule]]\nname = "p"\neffect = "allow"\npublic = true\nroles_any = ["x"]\n'
    )
    assert public == [
        'gateway.toml:12: rule.public "true" matches every request, with or without a token: '
        "it cannot also require authenticated, roles or users"
    ]
    empty = problems(HEAD + '[[rule]]\nname = "e"\neffect = "allow"\nmethods = []\n')
    assert empty[0].startswith('gateway.toml:12: rule.methods "[]" is empty')


def test_the_file_is_bounded_and_must_exist(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text(HEAD + "#" * 2000)
    with pytest.raises(PolicyFileError, match="larger than GATEWAY_CONFIG_MAX_BYTES"):
        load_policy(str(big), max_bytes=1000)
    load_policy(str(big), max_bytes=len(big.read_bytes()))  # exactly at the bound: read whole
    with pytest.raises(PolicyFileError, match="cannot be read"):
        load_policy(str(tmp_path / "missing.toml"))
