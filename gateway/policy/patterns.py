"""Path patterns of rules and prefixes of routes: parsed once, checked against what a canonical
path can be, and compared with each other (for the shadowed-rule check).

Both are matched against the decoded canonical path that the internal token binds, minus its
``/v1`` prefix (``htu`` ``/v1/files/docs/a`` is matched as ``/files/docs/a``): the one path
:func:`gateway.proxy.paths.backend_path` lets through. That path never has an empty segment
(``//``, a trailing ``/``), a dot segment, a ``%`` (``%25`` is refused, so nothing decodes to
one), ``\\``, ``?``, ``#`` or a control character, and never starts with ``/auth``: a pattern
asking for any of those can never match, so it is refused rather than silently dead (Envoy
CVE-2019-9901, Calico's ``/pub`` matching ``/public-leak``: the mistakes are in the matching).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``*``: exactly one segment; a trailing ``/**``: zero or more whole segments.
ONE = "*"
REST = "**"

# What a decoded canonical path segment can never hold (gateway/proxy/paths.py refuses the
# raw forms, and their escapes, before any policy work).
_NEVER = re.compile(r"[%\\?#\x00-\x1f\x7f]")
#: The gateway's own routes (``/api/v1/auth/...``): never proxied, so never a route or a rule.
GATEWAY_SEGMENT = "auth"


@dataclass(frozen=True, slots=True)
class Pattern:
    """``segments`` exactly (``*`` matching any one), then, if ``rest``, anything below."""

    segments: tuple[str, ...]
    rest: bool

    def covers(self, other: Pattern) -> bool:
        """Every path ``other`` matches, this matches too."""
        mine, theirs = self.segments, other.segments
        for i, segment in enumerate(mine):
            if i == len(theirs):
                # ``other`` matches the path that ends here; this needs more segments
                return False
            if segment != ONE and (theirs[i] == ONE or theirs[i] != segment):
                return False
        if self.rest:
            return True
        return len(theirs) == len(mine) and not other.rest


def _segment_problem(segment: str) -> str | None:
    if not segment:
        return "has an empty segment ('//' or a trailing '/'): no canonical path has one"
    if segment in (".", ".."):
        return "has a dot segment: no canonical path has one"
    if _NEVER.search(segment):
        return (
            "has '%', '\\', '?', '#' or a control character: patterns match the decoded path, "
            "which never holds one (and never the query or the fragment)"
        )
    return None


def parse_pattern(text: str) -> Pattern | str:
    """The pattern, or why it can never match."""
    if not text.startswith("/"):
        return "must start with '/' (paths are relative to /api/v1)"
    if text == "/":
        return "matches no path (use '/**' for every path)"
    parts = text[1:].split("/")
    rest = parts[-1] == REST
    if rest:
        parts = parts[:-1]
    for segment in parts:
        if segment == REST:
            return "has '**' before the end: only a trailing '/**' is allowed"
        if ONE in segment and segment != ONE:
            return "has '*' inside a segment: '*' stands for one whole segment, no globs"
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    if parts and parts[0] == GATEWAY_SEGMENT:
        return "is under /auth, the gateway's own routes"
    return Pattern(tuple(parts), rest)


def parse_prefix(text: str) -> tuple[str, ...] | str:
    """A route prefix as its segments (``/`` is ``()``, the catch-all), or why it is refused."""
    if not text.startswith("/"):
        return "must start with '/' (prefixes are relative to /api/v1)"
    if text == "/":
        return ()
    parts = text[1:].split("/")
    for segment in parts:
        if ONE in segment:
            return "has '*': a prefix is literal segments (rules hold the patterns)"
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    if parts[0] == GATEWAY_SEGMENT:
        return "is under /auth, the gateway's own routes"
    return tuple(parts)
