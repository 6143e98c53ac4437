"""Which operations of a service's OpenAPI document no allow rule covers (``tokengate policy
check --openapi SERVICE=FILE_OR_URL``): a route the service serves that every caller would get a
403 for is usually a forgotten rule, found before deploying rather than by a user.

A service's ``/v1/x`` is the rules' ``/x`` (the proxy maps ``/api/v1/x`` to it); a templated
segment ``{id}`` stands for any one segment, so an operation is covered only by a rule whose
pattern holds every value of it (``/notes/*`` or ``/notes/**`` cover ``/notes/{id}``,
``/notes/1`` does not). Any allow rule counts, whatever identity it asks for; deny rules are not
subtracted (a deny that carves out part of an operation is deliberate).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from gateway.policy.patterns import ONE, Pattern
from gateway.policy.table import Policy

#: Largest OpenAPI document read (bytes): far above any real service's, far below harm.
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
#: Seconds to fetch a document given by URL.
FETCH_TIMEOUT = 10.0
#: Operations examined per document (a document is the operator's, but bounded all the same).
MAX_OPERATIONS = 10_000
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_TEMPLATE = re.compile(r"\{[^{}/]+\}")
SERVICE_PREFIX = "/v1"


class DocumentError(Exception):
    """An OpenAPI document that cannot be read or is not one."""


def read_document(source: str) -> Mapping[str, Any]:
    """The JSON document at ``source``: an ``http(s)://`` URL or a file path."""
    if source.startswith(("http://", "https://")):
        try:
            with (
                httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=False) as client,
                client.stream("GET", source) as response,
            ):
                if response.status_code != 200:
                    raise DocumentError(f"GET answered {response.status_code}")
                raw = b""
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_DOCUMENT_BYTES:
                        raise DocumentError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise DocumentError(f"cannot be fetched ({type(exc).__name__})") from None
    else:
        try:
            with open(source, "rb") as handle:
                raw = handle.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise DocumentError(f"cannot be read ({exc.strerror})") from None
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise DocumentError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DocumentError("is not JSON (an OpenAPI document in JSON form)") from None
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise DocumentError("is not an OpenAPI document (no 'paths' object)")
    return document


def operation_pattern(path: str) -> Pattern | None:
    """A service path (``/v1/notes/{id}``) as the rules' pattern (``/notes/*``); ``None`` when
    it is not under ``/v1`` (never proxied)."""
    if not path.startswith(SERVICE_PREFIX + "/"):
        return None
    segments = path[len(SERVICE_PREFIX) + 1 :].split("/")
    return Pattern(tuple(ONE if _TEMPLATE.fullmatch(s) else s for s in segments), False)


def uncovered(policy: Policy, service: str, document: Mapping[str, Any]) -> list[str]:
    """One warning per operation of ``document`` (served by ``service``) no allow rule covers,
    or that the route table sends elsewhere."""
    warnings: list[str] = []
    allows = [rule for rule in policy.rules if rule.allow]
    paths: Mapping[str, Any] = document["paths"]
    seen = 0
    for path, item in paths.items():
        if not isinstance(path, str) or not isinstance(item, dict):
            continue
        pattern = operation_pattern(path)
        for method in _METHODS:
            if method not in item:
                continue
            seen += 1
            if seen > MAX_OPERATIONS:
                warnings.append(f"{service}: more than {MAX_OPERATIONS} operations, rest skipped")
                return warnings
            operation = f"{service}: {method.upper()} {path}"
            if pattern is None:
                warnings.append(f"{operation} is not under /v1: the gateway never proxies it")
                continue
            rules_path = "/" + "/".join(pattern.segments)
            routed = policy.service_for(rules_path)
            if routed != service:
                where = "no route (404)" if routed is None else f"service {routed}"
                warnings.append(f"{operation} is routed to {where}, not {service}")
                continue
            covered = any(
                (rule.methods is None or method.upper() in rule.methods)
                and (rule.paths is None or any(p.covers(pattern) for p in rule.paths))
                for rule in allows
            )
            if not covered:
                warnings.append(
                    f"{operation} (rules' {rules_path}) is covered by no allow rule: "
                    "every caller gets 403"
                )
    return warnings
