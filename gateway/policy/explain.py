"""Why a request is allowed or denied: every rule, criterion by criterion (``tokengate policy
explain`` and ``tokengate policy test``; Authelia's ``check-policy`` is the model).

The verdict is always :meth:`Policy.decide`'s, on the path the proxy would bind: the request path
goes through :func:`gateway.proxy.paths.backend_path` first, so a path the proxy refuses is
reported as refused, never explained as if it could be served. The per-criterion trace scans
every rule (an operator's tool, not the request path) and must agree with the verdict; a
disagreement is a bug in this module and is raised, not printed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from gateway.errors import GatewayError
from gateway.policy.patterns import ONE, Pattern
from gateway.policy.table import Caller, Policy, Rule
from gateway.proxy.paths import PUBLIC_PREFIX, backend_path

#: The criteria of a rule, in the order a trace shows them.
CRITERIA = ("methods", "paths", "public", "authenticated", "roles_any", "roles_all", "users")
HIT, MISS, ABSENT = "hit", "miss", "-"
# What a client may write unescaped in a path (RFC 3986 pchar, "/" and "%"): anything else an
# operator types (a space, a non-ASCII letter) is percent-encoded as a client would send it.
_SAFE = "/%!$&'()*+,;=:@-._~"


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: Rule
    criteria: tuple[tuple[str, str], ...]
    matched: bool

    def line(self) -> str:
        shown = " ".join(f"{name}={outcome}" for name, outcome in self.criteria)
        effect = "allow" if self.rule.allow else "deny"
        verdict = "match" if self.matched else "no match"
        return f"rule {self.rule.name} ({effect}): {shown} => {verdict}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """One request against one policy: where it goes and which rules decided."""

    #: the path as rules see it (decoded, canonical), or ``None`` when the proxy refuses it
    path: str | None
    #: why the proxy refuses the path (status and message), when it does
    refused: str | None
    #: the route prefix and service, when one matches
    route: tuple[str, str] | None
    traces: tuple[RuleTrace, ...]
    allowed: bool
    #: the allowing rule, or the matching deny rules
    deciding: tuple[str, ...]

    def route_line(self) -> str:
        if self.refused is not None:
            return f"path: refused by the proxy before any rule ({self.refused})"
        if self.route is None:
            return "route: no route -> 404"
        prefix, service = self.route
        return f"route: prefix {prefix} -> service {service}"

    def decision_line(self, anonymous: bool) -> str:
        if self.allowed:
            return f"decision: allow (rule {self.deciding[0]})"
        if self.refused is not None:
            return f"decision: deny (the proxy refuses the path: {self.refused})"
        if self.route is None:
            return "decision: deny (no route -> 404)"
        status = "401" if anonymous else "403"
        if self.deciding:
            return f"decision: deny (deny rule {', '.join(self.deciding)} matched -> {status})"
        return f"decision: deny (no allow rule matched -> {status})"


def canonical(path: str) -> tuple[str | None, str | None]:
    """``path`` as rules write it (``/files/x``) through the proxy's checks: the decoded path
    rules match, or why the proxy refuses it (``400 malformed request path``)."""
    if not path.startswith("/"):
        return None, "400 the path must start with '/' (relative to /api/v1)"
    raw = quote(PUBLIC_PREFIX.rstrip("/") + path, safe=_SAFE)
    try:
        target = backend_path(raw.encode("ascii"), unquote(raw))
    except GatewayError as exc:
        return None, f"{exc.status} {exc.message}"
    return target.rule_path, None


def pattern_matches(pattern: Pattern, segments: list[str]) -> bool:
    if len(segments) < len(pattern.segments):
        return False
    if len(segments) > len(pattern.segments) and not pattern.rest:
        return False
    return all(
        mine == ONE or mine == theirs
        for mine, theirs in zip(pattern.segments, segments, strict=False)
    )


def trace_rule(rule: Rule, method: str, segments: list[str], caller: Caller | None) -> RuleTrace:
    def given(value: object, ok: bool) -> str:
        return ABSENT if value is None else (HIT if ok else MISS)

    outcomes: dict[str, str] = {
        "methods": given(rule.methods, rule.methods is not None and method in rule.methods),
        "paths": given(
            rule.paths,
            rule.paths is not None and any(pattern_matches(p, segments) for p in rule.paths),
        ),
        "public": HIT if rule.public else ABSENT,
        "authenticated": given(True if rule.authenticated else None, caller is not None),
        "roles_any": given(
            rule.roles_any,
            caller is not None
            and rule.roles_any is not None
            and bool(rule.roles_any & caller.roles),
        ),
        "roles_all": given(
            rule.roles_all or None, caller is not None and rule.roles_all <= caller.roles
        ),
        "users": given(
            rule.users, caller is not None and rule.users is not None and caller.sub in rule.users
        ),
    }
    if caller is None and rule.allow and not rule.public and not rule.needs_user:
        # an anonymous request passes by a public allow rule only (Rule.matches_caller)
        outcomes["public"] = MISS
    matched = (
        outcomes["methods"] != MISS and outcomes["paths"] != MISS and rule.matches_caller(caller)
    )
    return RuleTrace(rule, tuple((name, outcomes[name]) for name in CRITERIA), matched)


def _route(policy: Policy, path: str) -> tuple[str, str] | None:
    segments = tuple(path[1:].split("/"))
    best: tuple[tuple[str, ...], str] | None = None
    for prefix, service in policy.routes:
        if segments[: len(prefix)] == prefix and (best is None or len(prefix) > len(best[0])):
            best = (prefix, service)
    return None if best is None else ("/" + "/".join(best[0]), best[1])


def explain(policy: Policy, method: str, path: str, caller: Caller | None) -> Explanation:
    """``method path`` by ``caller`` (``None``: anonymous) against ``policy``."""
    rules_path, refused = canonical(path)
    if rules_path is None:
        return Explanation(None, refused, None, (), False, ())
    segments = rules_path[1:].split("/")
    traces = tuple(trace_rule(rule, method, segments, caller) for rule in policy.rules)
    route = _route(policy, rules_path)
    if route is not None and route[1] != policy.service_for(rules_path):
        raise AssertionError(f"explain disagrees with the route table on {rules_path}")
    decision = policy.decide(method, rules_path, caller)
    matching = [t.rule for t in traces if t.matched]
    denies = tuple(rule.name for rule in matching if not rule.allow)
    allows = [rule.name for rule in matching if rule.allow]
    if decision.allowed != (bool(allows) and not denies) or (
        decision.allowed and decision.rule != allows[0]
    ):
        raise AssertionError(f"explain disagrees with Policy.decide on {method} {rules_path}")
    allowed = decision.allowed and route is not None
    deciding = (allows[0],) if allowed else denies
    return Explanation(rules_path, None, route, traces, allowed, deciding)


def exercised(explanations: Iterable[Explanation]) -> set[str]:
    """The rules that matched at least one of these requests."""
    return {t.rule.name for e in explanations for t in e.traces if t.matched}
