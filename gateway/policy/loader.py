"""Reading ``GATEWAY_CONFIG``: one TOML file (stdlib ``tomllib``) of services, routes and rules,
validated completely before the gateway serves anything.

Every problem is found, not only the first, and each is one line naming the file, the line, the
key and the offending value (``gateway.toml:21: route.service "nosuch" is not a service``), so an
operator fixes the file in one pass. ``tomllib`` reports no positions for values, so
:class:`_Lines` finds them by scanning the text: the line of a table's header, of a key in it,
and of a value inside a multi-line array.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import ssl
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from servicekit.config import ConfigError

from gateway.policy.patterns import Pattern, parse_pattern, parse_prefix
from gateway.policy.table import Policy, Rule, ServiceConfig, tls_context
from gateway.proxy.tls import TLSFileError
from gateway.proxy.upstream import Origin

#: Default of ``GATEWAY_CONFIG_MAX_BYTES``: far above any real policy, far below harm.
DEFAULT_MAX_BYTES = 1024 * 1024
#: Longest value echoed in a problem line (a pasted blob must not flood the log).
_SHOWN = 80

_TOP_KEYS = frozenset({"version", "identity", "services", "route", "rule"})
_SERVICE_KEYS = frozenset(
    {
        "url",
        "audience",
        "connect_timeout",
        "probe",
        "read_timeout",
        "ca_file",
        "client_cert_file",
        "client_key_file",
    }
)
_ROUTE_KEYS = frozenset({"prefix", "service"})
_RULE_KEYS = frozenset(
    {
        "name",
        "effect",
        "methods",
        "paths",
        "authenticated",
        "roles_any",
        "roles_all",
        "users",
        "public",
    }
)
# Names a rule writes into the internal token (``pol``) and services into /readyz checks.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# RFC 9110 §9.1: methods are case-sensitive tokens; every registered one is upper case, and a
# lower-case entry would never match what a client's request names.
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
# /readyz reports these itself; a service of the same name would hide one.
_RESERVED_SERVICES = frozenset({"postgres", "redis"})
_TIMEOUT_MAX = 600.0


class PolicyFileError(ConfigError):
    """The file cannot be used: one line per problem, ``FILE:LINE: key "value" reason``."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"GATEWAY_CONFIG {path}: {count}\n" + "\n".join(problems))


class _Lines:
    """Where each table and key of a TOML text is (1-based line numbers), by scanning it."""

    _HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
    _KEY = re.compile(
        r"\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="
    )

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.tables: dict[tuple[str, str], int] = {}
        self.keys: dict[tuple[str, str, str], int] = {}
        counts: dict[str, int] = {}
        table: tuple[str, str] = ("", "")
        for number, line in enumerate(self.lines, 1):
            header = self._HEADER.match(line)
            if header is not None and not line.lstrip().startswith(('"', "'")):
                parts = _dotted(header.group(2))
                if header.group(1) == "[[":
                    index = counts.get(parts[0], 0)
                    counts[parts[0]] = index + 1
                    table = (parts[0], str(index))
                else:
                    table = (parts[0], ".".join(parts[1:]))
                self.tables.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key is not None:
                parts = _dotted(key.group(1))
                kind, name = table
                if kind == "services" and not name and len(parts) > 1:
                    # [services] then files.url = ...: the service's name is in the key
                    self.keys.setdefault(("services", parts[0], ".".join(parts[1:])), number)
                elif not kind and parts[0] == "services" and len(parts) > 2:
                    self.keys.setdefault(("services", parts[1], ".".join(parts[2:])), number)
                self.keys.setdefault((kind, name, ".".join(parts)), number)

    def of(self, kind: str, name: str, key: str | None = None, value: Any = None) -> int:
        """The line of ``value`` in ``key`` of table ``kind``/``name`` (what is known of it)."""
        start = self.tables.get((kind, name), 1)
        if key is None:
            return start
        line = self.keys.get((kind, name, key))
        if line is None:
            return start
        if isinstance(value, str):
            # inside a multi-line array: the first line from the key's on that holds the value
            quoted = (json.dumps(value), f"'{value}'")
            for number in range(line, min(line + 1000, len(self.lines) + 1)):
                text = self.lines[number - 1]
                if any(q in text for q in quoted):
                    return number
                if number > line and (self._KEY.match(text) or self._HEADER.match(text)):
                    break
        return line


def _dotted(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", text)]


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _SHOWN:
        text = text[:_SHOWN] + "..."
    return json.dumps(text)


class _Checker:
    def __init__(self, path: str, lines: _Lines) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[tuple[int, str]] = []

    def fail(self, line: int, key: str, value: Any, reason: str) -> None:
        self.problems.append((line, f"{self.path}:{line}: {key} {_show(value)} {reason}"))

    def unknown_keys(
        self, table: Mapping[str, Any], allowed: frozenset[str], kind: str, name: str, label: str
    ) -> None:
        for key in table:
            if key not in allowed:
                line = self.lines.of(kind, name, key)
                self.fail(line, f"{label}{key}", table[key], "is not a known key")


def load_policy(path: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Policy:
    """Read, validate and compile ``path``; raise :class:`PolicyFileError` naming every problem."""
    return parse_policy(read_policy_file(path, max_bytes=max_bytes), path)


def read_policy_file(path: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``path``, at most ``max_bytes`` (a reload hashes exactly what it parses)."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise PolicyFileError(
            path, [f"{path}:0: GATEWAY_CONFIG {_show(path)} cannot be read ({exc.strerror})"]
        ) from None
    if len(raw) > max_bytes:
        raise PolicyFileError(
            path,
            [
                f"{path}:0: GATEWAY_CONFIG {_show(path)} is larger than "
                f"GATEWAY_CONFIG_MAX_BYTES ({max_bytes})"
            ],
        )
    return raw


def parse_policy(raw: bytes, path: str = "gateway.toml") -> Policy:
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise PolicyFileError(
            path, [f"{path}:0: GATEWAY_CONFIG {_show(path)} is not UTF-8"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else 0
        if found is None and "end of document" in str(exc):
            # a file cut short (a half-written reload): the problem is on its last line
            line = len(text.splitlines())
        reason = str(exc).split(" (at ")[0]
        shown = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
        raise PolicyFileError(
            path, [f"{path}:{line}: toml {_show(shown.strip())} is not valid TOML: {reason}"]
        ) from None
    lines = _Lines(text)
    check = _Checker(path, lines)
    policy = _validate(data, check)
    if check.problems:
        ordered = [text for _, text in sorted(check.problems, key=lambda p: p[0])]
        raise PolicyFileError(path, ordered)
    assert policy is not None
    return Policy(**{**policy, "source": path, "digest": hashlib.sha256(raw).hexdigest()})


def _validate(data: dict[str, Any], check: _Checker) -> dict[str, Any] | None:
    lines = check.lines
    check.unknown_keys(data, _TOP_KEYS, "", "", "")
    version = data.get("version")
    if version != 1 or isinstance(version, bool):
        check.fail(
            lines.of("", "", "version"),
            "version",
            "" if version is None else version,
            "must be 1" if version is not None else "is missing (write version = 1)",
        )
    services = _services(data.get("services"), check)
    identity = data.get("identity", "backend")
    if not isinstance(identity, str) or identity not in services:
        check.fail(lines.of("", "", "identity"), "identity", identity, "is not a service")
    routes = _routes(data.get("route", []), services, check)
    rules = _rules(data.get("rule", []), check)
    _shadowed(rules, check)
    if check.problems:
        return None
    return {
        "services": services,
        "identity": identity,
        "routes": tuple(routes),
        "rules": tuple(rule for rule, _ in rules),
    }


def _services(value: Any, check: _Checker) -> dict[str, ServiceConfig]:
    lines = check.lines
    if not isinstance(value, dict) or not value:
        check.fail(
            lines.of("", "", "services"),
            "services",
            "" if value is None else value,
            "must name at least one [services.NAME] table",
        )
        return {}
    out: dict[str, ServiceConfig] = {}
    audiences: dict[str, str] = {}
    for name, table in value.items():
        label = f"services.{name}"
        at = lines.of("services", name)
        if not isinstance(table, dict):
            check.fail(at, label, table, "must be a table with url and audience")
            continue
        if not _NAME.fullmatch(name) or name in _RESERVED_SERVICES:
            check.fail(
                at,
                "services",
                name,
                "is not a usable service name (letters, digits, _.:-; not postgres or redis)",
            )
        check.unknown_keys(table, _SERVICE_KEYS, "services", name, label + ".")
        url = table.get("url")
        if not isinstance(url, str) or not url:
            check.fail(
                lines.of("services", name, "url"),
                f"{label}.url",
                "" if url is None else url,
                "is required: the service's http(s) URL on the internal network",
            )
            url = None
        else:
            try:
                Origin(url.rstrip("/"))
            except ValueError as exc:
                # never echo a URL that may carry credentials
                shown = "<redacted>" if "@" in url else url
                check.fail(
                    lines.of("services", name, "url", url),
                    f"{label}.url",
                    shown,
                    f"is not usable: {exc}",
                )
                url = None
        audience = table.get("audience")
        if not isinstance(audience, str) or not audience:
            check.fail(
                lines.of("services", name, "audience"),
                f"{label}.audience",
                "" if audience is None else audience,
                "is required: the aud of every internal token for this service",
            )
            audience = None
        elif audience in audiences:
            check.fail(
                lines.of("services", name, "audience", audience),
                f"{label}.audience",
                audience,
                f"is also service {audiences[audience]!r}'s: "
                "a token for one would be accepted by the other",
            )
        else:
            audiences[audience] = name
        timeouts: dict[str, float | None] = {}
        for key in ("connect_timeout", "read_timeout"):
            raw = table.get(key)
            ok = (
                isinstance(raw, int | float)
                and not isinstance(raw, bool)
                and math.isfinite(raw)
                and 0 < raw <= _TIMEOUT_MAX
            )
            if raw is not None and not ok:
                check.fail(
                    lines.of("services", name, key),
                    f"{label}.{key}",
                    raw,
                    f"must be seconds, more than 0 and at most {_TIMEOUT_MAX:.0f}",
                )
            timeouts[key] = float(raw) if ok and raw is not None else None
        files: dict[str, str | None] = {}
        for key in ("ca_file", "client_cert_file", "client_key_file"):
            raw = table.get(key)
            files[key] = None
            if raw is None:
                continue
            if not isinstance(raw, str) or not raw:
                check.fail(
                    lines.of("services", name, key), f"{label}.{key}", raw, "must be a file path"
                )
            elif not (os.path.isfile(raw) and os.access(raw, os.R_OK)):
                check.fail(
                    lines.of("services", name, key, raw),
                    f"{label}.{key}",
                    raw,
                    "is not a readable file",
                )
            else:
                files[key] = raw
        paired = (table.get("client_cert_file") is None) == (table.get("client_key_file") is None)
        if not paired:
            check.fail(
                at, label, name, "needs both client_cert_file and client_key_file, or neither"
            )
        if url is not None and url.startswith("https://") and table.get("ca_file") is None:
            # the hop trusts the service's own CA only, never the system store (backend
            # impersonation by any publicly trusted certificate for its name)
            check.fail(
                lines.of("services", name, "url", url),
                f"{label}.url",
                url,
                "is https:// but the service has no ca_file (the system store is never used)",
            )
        if paired and any(files.values()):
            if url is not None and not url.startswith("https://"):
                check.fail(
                    lines.of("services", name, "url", url),
                    f"{label}.url",
                    url,
                    "must be https:// when ca_file or a client certificate is given",
                )
            try:
                tls_context(files["ca_file"], files["client_cert_file"], files["client_key_file"])
            except (ssl.SSLError, OSError, ValueError, TLSFileError):
                check.fail(
                    at, label, name, "has TLS files that do not load (PEM CA, certificate, key)"
                )
        probe = table.get("probe", False)
        if not isinstance(probe, bool):
            check.fail(
                lines.of("services", name, "probe"),
                f"{label}.probe",
                probe,
                "must be true or false (true: /readyz shows whether the service verifies a "
                "signed probe of this gateway's)",
            )
            probe = False
        if url is not None and audience is not None:
            out[name] = ServiceConfig(
                probe=probe,
                name=name,
                url=url.rstrip("/"),
                audience=audience,
                connect_timeout=timeouts["connect_timeout"],
                read_timeout=timeouts["read_timeout"],
                ca_file=files["ca_file"],
                client_cert_file=files["client_cert_file"],
                client_key_file=files["client_key_file"],
            )
        else:
            # keep the name known, so routes naming it are not reported a second time
            out[name] = ServiceConfig(name=name, url="", audience="")
    return out


def _tables(value: Any, kind: str, check: _Checker) -> Iterable[tuple[str, dict[str, Any]]]:
    if not isinstance(value, list):
        check.fail(
            check.lines.of("", "", kind), kind, value, f"must be an array of tables ([[{kind}]])"
        )
        return
    for index, table in enumerate(value):
        if not isinstance(table, dict):
            check.fail(
                check.lines.of("", "", kind),
                kind,
                table,
                f"must be an array of tables ([[{kind}]])",
            )
            continue
        yield str(index), table


def _routes(
    value: Any, services: Mapping[str, ServiceConfig], check: _Checker
) -> list[tuple[tuple[str, ...], str]]:
    lines = check.lines
    out: list[tuple[tuple[str, ...], str]] = []
    seen: set[tuple[str, ...]] = set()
    for index, table in _tables(value, "route", check):
        check.unknown_keys(table, _ROUTE_KEYS, "route", index, "route.")
        prefix = table.get("prefix")
        service = table.get("service")
        segments: tuple[str, ...] | None = None
        if not isinstance(prefix, str):
            check.fail(
                lines.of("route", index, "prefix"),
                "route.prefix",
                "" if prefix is None else prefix,
                "is required: a path prefix under /api/v1",
            )
        else:
            parsed = parse_prefix(prefix)
            if isinstance(parsed, str):
                check.fail(lines.of("route", index, "prefix"), "route.prefix", prefix, parsed)
            elif parsed in seen:
                check.fail(
                    lines.of("route", index, "prefix"), "route.prefix", prefix, "is routed twice"
                )
            else:
                seen.add(parsed)
                segments = parsed
        if not isinstance(service, str) or service not in services:
            check.fail(
                lines.of("route", index, "service"),
                "route.service",
                "" if service is None else service,
                "is not a service",
            )
        elif segments is not None:
            out.append((segments, service))
    return out


def _strings(table: Mapping[str, Any], key: str, index: str, check: _Checker) -> list[str] | None:
    value = table.get(key)
    if value is None:
        return None
    at = check.lines.of("rule", index, key)
    if not isinstance(value, list):
        check.fail(at, f"rule.{key}", value, "must be an array of strings")
        return []
    if not value:
        check.fail(
            at, f"rule.{key}", value, "is empty: it would match nothing (leave it out to match all)"
        )
        return []
    good: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            check.fail(at, f"rule.{key}", item, "must be a non-empty string")
        else:
            good.append(item)
    return good


def _rules(value: Any, check: _Checker) -> list[tuple[Rule, str]]:
    lines = check.lines
    out: list[tuple[Rule, str]] = []
    names: dict[str, int] = {}
    for index, table in _tables(value, "rule", check):
        before = len(check.problems)
        check.unknown_keys(table, _RULE_KEYS, "rule", index, "rule.")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            check.fail(
                lines.of("rule", index, "name"),
                "rule.name",
                "" if name is None else name,
                "is required: letters, digits and _.:- (at most 64)",
            )
            name = None
        elif name in names:
            check.fail(
                lines.of("rule", index, "name"),
                "rule.name",
                name,
                f"is a duplicate (first on line {names[name]})",
            )
        else:
            names[name] = lines.of("rule", index, "name")
        effect = table.get("effect")
        if effect not in ("allow", "deny"):
            check.fail(
                lines.of("rule", index, "effect"),
                "rule.effect",
                "" if effect is None else effect,
                'must be "allow" or "deny"',
            )
        methods = _strings(table, "methods", index, check)
        for method in methods or ():
            if not _METHOD.fullmatch(method):
                check.fail(
                    lines.of("rule", index, "methods", method),
                    "rule.methods",
                    method,
                    "is not an upper-case HTTP method",
                )
        patterns: list[Pattern] = []
        for text in _strings(table, "paths", index, check) or ():
            parsed = parse_pattern(text)
            if isinstance(parsed, str):
                check.fail(lines.of("rule", index, "paths", text), "rule.paths", text, parsed)
            else:
                patterns.append(parsed)
        flags: dict[str, bool] = {}
        for key in ("authenticated", "public"):
            raw = table.get(key, False)
            if not isinstance(raw, bool):
                check.fail(
                    lines.of("rule", index, key), f"rule.{key}", raw, "must be true or false"
                )
                raw = False
            flags[key] = raw
        roles_any = _strings(table, "roles_any", index, check)
        roles_all = _strings(table, "roles_all", index, check)
        users = _strings(table, "users", index, check)
        if flags["public"] and (
            flags["authenticated"]
            or roles_any is not None
            or roles_all is not None
            or users is not None
        ):
            check.fail(
                lines.of("rule", index, "public"),
                "rule.public",
                True,
                "matches every request, with or without a token: "
                "it cannot also require authenticated, roles or users",
            )
        if len(check.problems) != before or name is None:
            continue
        method_set = None
        if methods is not None:
            method_set = frozenset(methods) | ({"HEAD"} if "GET" in methods else set())
        out.append(
            (
                Rule(
                    name=name,
                    allow=effect == "allow",
                    methods=method_set,
                    paths=tuple(patterns) if table.get("paths") is not None else None,
                    authenticated=flags["authenticated"],
                    roles_any=frozenset(roles_any) if roles_any is not None else None,
                    roles_all=frozenset(roles_all or ()),
                    users=frozenset(users) if users is not None else None,
                    public=flags["public"],
                ),
                index,
            )
        )
    return out


def _shadowed(rules: list[tuple[Rule, str]], check: _Checker) -> None:
    denies = [rule for rule, _ in rules if not rule.allow]
    for rule, index in rules:
        if not rule.allow:
            continue
        for deny in denies:
            if deny.covers(rule):
                check.fail(
                    check.lines.of("rule", index, "name", rule.name),
                    "rule.name",
                    rule.name,
                    f"can never allow anything: deny rule {deny.name!r} "
                    "matches every request it does",
                )
                break
