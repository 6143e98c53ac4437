"""The compiled policy: one immutable :class:`Policy` per loaded file.

Everything a request needs is built here once, so that a later reload (issue 25) compiles a new
object off the request path and swaps one reference. Lookup never scans every rule:

- routes sit in a segment trie; the deepest node with a service on the request's path is the
  longest matching prefix, on segment boundaries by construction (``/files`` is the node
  ``files``, which ``/filesystem`` never reaches);
- rules sit in one segment trie per method (plus one for rules without ``methods``): walking the
  request's segments visits each trie node at most once (``*`` is one more child, a trailing
  ``/**`` a mark on the node), so the cost grows with the path's length and the rules that
  actually match, not with the number of rules.

Rules are a set: a request is allowed iff at least one ``allow`` rule matches it and no ``deny``
rule does (deny overrides; file order never changes a decision, it only picks which of several
allowing rules the internal token names in ``pol``).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gateway.policy.patterns import ONE, Pattern
from gateway.proxy.tls import client_context

#: Distinct (method, path) candidate sets remembered per table (a client asks for the same few).
CANDIDATE_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: a user with a verified, unrevoked access token (``None`` is anonymous)."""

    sub: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]``: every criterion given must hold (``None``: the criterion is absent)."""

    name: str
    allow: bool
    #: already with ``HEAD`` wherever ``GET`` is (RFC 9110 §9.3.2: HEAD is GET without a body)
    methods: frozenset[str] | None
    paths: tuple[Pattern, ...] | None
    authenticated: bool = False
    roles_any: frozenset[str] | None = None
    roles_all: frozenset[str] = frozenset()
    users: frozenset[str] | None = None
    public: bool = False

    @property
    def needs_user(self) -> bool:
        return bool(
            self.authenticated or self.roles_any is not None or self.roles_all or self.users
        )

    def matches_caller(self, caller: Caller | None) -> bool:
        if self.public:
            return True
        if caller is None:
            # Anonymous requests pass only by a public allow rule; a deny rule that names no
            # identity matches them too (it denies everyone).
            return not self.allow and not self.needs_user
        if self.roles_any is not None and not (self.roles_any & caller.roles):
            return False
        if not self.roles_all <= caller.roles:
            return False
        return self.users is None or caller.sub in self.users

    def covers(self, other: Rule) -> bool:
        """Every request ``other`` matches, this rule matches too (both already valid)."""
        if self.methods is not None and (
            other.methods is None or not other.methods <= self.methods
        ):
            return False
        if self.paths is not None:
            if other.paths is None:
                return False
            if not all(any(mine.covers(p) for mine in self.paths) for p in other.paths):
                return False
        if self.public or not self.needs_user:
            return True
        if other.public or not other.needs_user:
            return False  # ``other`` matches callers (anonymous, ...) this one does not
        if self.roles_any is not None:
            implied = (other.roles_any is not None and other.roles_any <= self.roles_any) or bool(
                other.roles_all & self.roles_any
            )
            if not implied:
                return False
        if not self.roles_all <= other.roles_all:
            return False
        return self.users is None or (other.users is not None and other.users <= self.users)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: allowed: the allowing rule (the first in the file, when several allow), for the ``pol``
    #: claim; denied: the deny rule that matched, or ``None`` when no allow rule did (for the
    #: gateway's own log only, never a response)
    rule: str | None = None


DENIED = Decision(False)


class _RuleNode:
    __slots__ = ("below", "children", "here", "star")

    def __init__(self) -> None:
        self.children: dict[str, _RuleNode] = {}
        self.star: _RuleNode | None = None
        self.here: list[int] = []  # patterns that end exactly at this node
        self.below: list[int] = []  # patterns ending in '/**' here: this node and everything below

    def add(self, pattern: Pattern, index: int) -> None:
        node = self
        for segment in pattern.segments:
            if segment == ONE:
                if node.star is None:
                    node.star = _RuleNode()
                node = node.star
            else:
                node = node.children.setdefault(segment, _RuleNode())
        (node.below if pattern.rest else node.here).append(index)

    def collect(self, segments: list[str], out: set[int]) -> None:
        active = [self]
        for segment in segments:
            following: list[_RuleNode] = []
            for node in active:
                out.update(node.below)
                child = node.children.get(segment)
                if child is not None:
                    following.append(child)
                if node.star is not None:
                    following.append(node.star)
            if not following:
                return
            active = following
        for node in active:
            out.update(node.below)
            out.update(node.here)


class _RouteNode:
    __slots__ = ("children", "service")

    def __init__(self) -> None:
        self.children: dict[str, _RouteNode] = {}
        self.service: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One ``[services.NAME]`` table, validated."""

    name: str
    url: str
    audience: str
    connect_timeout: float | None = None
    read_timeout: float | None = None
    # TLS for the hop: the CA the service's certificate must chain to (instead of the system's
    # trust store) and the gateway's client certificate for it (mutual TLS)
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    #: /readyz checks that the service verifies a signed probe (its internal_auth answers it),
    #: not only that its /healthz answers; shown in ``checks``, never failing readiness
    probe: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        """The hop's TLS context from the files above (``None``: the pool's default)."""
        return tls_context(self.ca_file, self.client_cert_file, self.client_key_file)


def tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext | None:
    """The hop's client context (:func:`gateway.proxy.tls.client_context`: the service's CA
    only, never the system store; host name checked; TLS 1.2+), or ``None`` without a CA file
    (the loader refuses an https:// service without one). Raises ``TLSFileError`` on a bad
    file."""
    if ca_file is None:
        return None
    return client_context(ca_file, cert_file, key_file)


@dataclass(frozen=True)
class Policy:
    """Services, routes and rules of one ``GATEWAY_CONFIG`` file, compiled."""

    services: Mapping[str, ServiceConfig]
    identity: str
    routes: tuple[tuple[tuple[str, ...], str], ...]
    rules: tuple[Rule, ...]
    source: str = ""
    #: SHA-256 (hex) of the bytes this table was compiled from: what a reload compares
    digest: str = ""
    _route_root: _RouteNode = field(init=False, repr=False, compare=False)
    _by_method: dict[str, _RuleNode] = field(init=False, repr=False, compare=False)
    _any_method: _RuleNode = field(init=False, repr=False, compare=False)
    _candidates: Callable[[str, str], tuple[int, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        root = _RouteNode()
        for segments, service in self.routes:
            node = root
            for segment in segments:
                node = node.children.setdefault(segment, _RouteNode())
            node.service = service
        by_method: dict[str, _RuleNode] = {}
        any_method = _RuleNode()
        for index, rule in enumerate(self.rules):
            tries: Iterable[_RuleNode] = (
                [any_method]
                if rule.methods is None
                else [by_method.setdefault(m, _RuleNode()) for m in sorted(rule.methods)]
            )
            for trie in tries:
                for pattern in rule.paths if rule.paths is not None else (Pattern((), True),):
                    trie.add(pattern, index)
        object.__setattr__(self, "_route_root", root)
        object.__setattr__(self, "_by_method", by_method)
        object.__setattr__(self, "_any_method", any_method)
        # a pure function of (method, path) over this immutable table: memoised per table
        object.__setattr__(
            self, "_candidates", functools.lru_cache(maxsize=CANDIDATE_CACHE)(self._lookup)
        )

    def service_for(self, path: str) -> str | None:
        """The service of the longest route prefix of ``path`` (``/files/x``), or ``None``."""
        node = self._route_root
        found = node.service
        for segment in path[1:].split("/"):
            child = node.children.get(segment)
            if child is None:
                break
            node = child
            if node.service is not None:
                found = node.service
        return found

    def decide(self, method: str, path: str, caller: Caller | None) -> Decision:
        """Allow iff an allow rule matches and no deny rule does; ``path`` as rules write it."""
        allowing: Rule | None = None
        for index in self._candidates(method, path):
            rule = self.rules[index]
            if not rule.matches_caller(caller):
                continue
            if not rule.allow:
                return Decision(False, rule.name)
            if allowing is None:
                allowing = rule
        return DENIED if allowing is None else Decision(True, allowing.name)

    def _lookup(self, method: str, path: str) -> tuple[int, ...]:
        found: set[int] = set()
        segments = path[1:].split("/")
        trie = self._by_method.get(method)
        if trie is not None:
            trie.collect(segments, found)
        self._any_method.collect(segments, found)
        # deny rules first would also do; sorted keeps "first allowing rule in the file" exact
        return tuple(sorted(found))
