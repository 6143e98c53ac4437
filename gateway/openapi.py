"""The OpenAPI 3.1 description of the public surface, served at ``GET /api/v1/openapi.json``.

One document, built here and nowhere else: the gateway serves it, and the tests read the same
object (``tests/test_openapi_routes.py`` fails when a route of either service exists that the
document does not describe, or the reverse; ``tests/contract/`` fuzzes every operation of the
served copy against the real processes with schemathesis).

It describes the auth routes, the backend's ``/v1/...`` routes as the proxy publishes them under
``/api/v1/...``, the one error body, and the security schemes. The numbers that bound a field
(note title and body lengths, paging limits) are the backend's; a test checks they agree.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit.routes import EVENTS_MAX_LIMIT
from gateway.dpop import ALGORITHMS
from gateway.proxy.paths import MAX_PATH_BYTES

PATH = "/api/v1/openapi.json"
MAX_TITLE = 200
MAX_NOTE_BODY = 10_000
MAX_LIMIT = 200
MAX_OFFSET = 10_000_000

Json = dict[str, Any]

_ERROR_TEXT = {
    400: "malformed request: body that is not strict JSON, a bad path or a bad DPoP proof",
    401: "missing, invalid, expired or revoked credentials",
    403: "not allowed: foreign Origin, a role the route needs, or a wrong current password",
    404: "no such resource (another user's resource is reported as missing)",
    408: "the request body paused longer than BODY_READ_TIMEOUT",
    413: "request body over the limit",
    414: f"request path over {MAX_PATH_BYTES} bytes",
    415: "a request body that is not application/json",
    422: "a JSON body or query parameter of the wrong shape",
    429: "rate limited; see Retry-After",
    502: "the backend gave an invalid answer or could not be reached",
    503: "a dependency is unavailable; see Retry-After",
    504: "the backend did not answer in time",
}
# What any proxied call can meet on the way, whatever the backend route.
_PROXY_ERRORS = (400, 401, 404, 414, 429, 502, 503, 504)


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Json | None = None) -> Json:
    return {"description": description, **({"content": _json(schema)} if schema else {})}


def _errors(*statuses: int) -> dict[str, Json]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in sorted(set(statuses))}


def _body(schema: Json, *, required: bool = True) -> Json:
    return {"required": required, "content": _json(schema)}


def _page_parameters() -> list[Json]:
    return [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
        },
        {
            "name": "offset",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
    ]


def _audit_parameters(*names: str, max_limit: int) -> list[Json]:
    known: dict[str, Json] = {
        "user": {"type": "string", "format": "uuid"},
        "type": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
        "outcome": {"type": "string", "enum": ["success", "failure"]},
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "after": {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"},
        "limit": {"type": "integer", "minimum": 1, "maximum": max_limit, "default": 50},
    }
    return [{"name": n, "in": "query", "schema": known[n]} for n in names]


def _id_parameter(name: str) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_USER_AUTH: list[Json] = [{"bearer": []}, {"dpop": []}]
_REFRESH_AUTH: list[Json] = [{"refreshCookie": []}, {"dpop": []}]

_NOTE_FIELDS: Json = {
    "title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE},
    "body": {"type": "string", "maxLength": MAX_NOTE_BODY},
}

_SCHEMAS: Json = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Credentials": {
        "type": "object",
        "required": ["email", "password"],
        "properties": {
            "email": {"type": "string", "minLength": 3, "maxLength": 320},
            "password": {"type": "string", "minLength": 1, "maxLength": 1024},
        },
    },
    "PasswordChange": {
        "type": "object",
        "required": ["current_password", "new_password"],
        "additionalProperties": False,
        "properties": {
            "current_password": {"type": "string", "minLength": 1, "maxLength": 1024},
            "new_password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
    },
    "RefreshBody": {
        "description": "DPoP-bound API clients only: the refresh token in the body, with a proof.",
        "type": "object",
        "required": ["refresh_token"],
        "properties": {"refresh_token": {"type": "string"}},
    },
    "LoginUser": {
        "type": "object",
        "required": ["id", "email", "roles"],
        "properties": {
            "id": {"type": "string"},
            "email": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"enum": ["Bearer", "DPoP"]},
            "expires_in": {"type": "integer", "minimum": 1},
            "refresh_token": {"type": "string", "description": "DPoP body mode only"},
            "refresh_expires_in": {"type": "integer", "minimum": 1},
            "user": _ref("LoginUser"),
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "created_at", "last_used_at", "expires_at", "current"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "created_at": {"type": "string", "format": "date-time"},
            "last_used_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "user_agent": {"type": ["string", "null"]},
            "ip": {"type": ["string", "null"]},
            "current": {"type": "boolean"},
            "key_bound": {"type": "boolean"},
            "jkt": {"type": ["string", "null"]},
        },
    },
    "AuditEvent": {
        "type": "object",
        "required": ["id", "seq", "writer", "at", "type", "outcome", "details"],
        "properties": {
            "id": {"type": "integer", "description": "the paging cursor's position"},
            "seq": {"type": "integer", "minimum": 1, "description": "position in its chain"},
            "writer": {"type": "string", "description": "process/instance/worker"},
            "at": {"type": "string", "format": "date-time"},
            "type": {"type": "string", "description": "docs/AUDIT.md lists every type"},
            "outcome": {"type": "string", "enum": ["success", "failure"]},
            "actor": {"type": ["string", "null"]},
            "subject": {"type": ["string", "null"], "format": "uuid"},
            "family": {"type": ["string", "null"], "format": "uuid"},
            "ip": {"type": ["string", "null"]},
            "user_agent": {"type": ["string", "null"], "maxLength": 256},
            "request_id": {"type": ["string", "null"]},
            "trace_id": {"type": ["string", "null"]},
            "service": {"type": ["string", "null"]},
            "rule": {"type": ["string", "null"]},
            "details": {"type": "object"},
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": _ref("AuditEvent")},
            "next": {
                "type": ["string", "null"],
                "description": "pass as `after` for the next (older) page; null on the last",
            },
        },
    },
    "SessionList": {
        "type": "object",
        "required": ["sessions"],
        "properties": {"sessions": {"type": "array", "items": _ref("Session")}},
    },
    "User": {
        "type": "object",
        "required": ["id", "email", "roles", "created_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "email": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "UserPage": {
        "type": "object",
        "required": ["items", "total", "limit", "offset"],
        "properties": {
            "items": {"type": "array", "items": _ref("User")},
            "total": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    "Note": {
        "type": "object",
        "required": ["id", "title", "body", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "title": {"type": "string"},
            "body": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "NotePage": {
        "type": "object",
        "required": ["items", "limit", "offset"],
        "properties": {
            "items": {"type": "array", "items": _ref("Note")},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    # a new note needs a title; a change may leave out either field
    "NewNote": {
        "type": "object",
        "required": ["title"],
        "additionalProperties": False,
        "properties": _NOTE_FIELDS,
    },
    "NoteChanges": {"type": "object", "additionalProperties": False, "properties": _NOTE_FIELDS},
    "Pointer": {
        "type": "object",
        "required": ["service", "demo", "openapi"],
        "properties": {
            "service": {"type": "string"},
            "demo": {"type": "string"},
            "openapi": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "unavailable"]},
            # true, or a short reason ("unreachable", "internal token refused: unknown_kid")
            "checks": {
                "type": "object",
                "additionalProperties": {"oneOf": [{"const": True}, {"type": "string"}]},
            },
        },
    },
}


def _operation(
    operation_id: str,
    summary: str,
    answers: dict[str, Json],
    *,
    errors: tuple[int, ...] = (),
    security: list[Json] = _USER_AUTH,
    description: str | None = None,
    parameters: list[Json] | None = None,
    body: Json | None = None,
) -> Json:
    """One operation; ``answers`` are its own responses, ``errors`` the shared error responses
    (by reference). The keys keep one order, so the served document does not change shape."""
    operation: Json = {"operationId": operation_id, "summary": summary}
    if description is not None:
        operation["description"] = description
    operation["security"] = security
    if parameters is not None:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {**answers, **_errors(*errors)}
    return operation


_PATHS: Json = {
    "/": {
        "get": _operation(
            "root",
            "Where to go: the demo page and this description",
            {
                "200": _ok("the pointers", _ref("Pointer")),
                "303": _ok("a browser (Accept: text/html) is sent to /demo/"),
            },
            security=[],
        )
    },
    "/healthz": {
        "get": _operation("healthz", "Liveness", {"200": _ok("alive", _ref("Health"))}, security=[])
    },
    "/readyz": {
        "get": _operation(
            "readyz",
            "Readiness: the identity service trusts the gateway's internal token, PostgreSQL and "
            "Redis answer",
            {
                "200": _ok("every dependency answers", _ref("Readiness")),
                "503": _ok("a dependency is down; Retry-After", _ref("Readiness")),
            },
            security=[],
        )
    },
    PATH: {
        "get": _operation(
            "openapi",
            "This document",
            {"200": _ok("OpenAPI 3.1", {"type": "object"})},
            security=[],
        )
    },
    "/api/v1/auth/login": {
        "post": _operation(
            "login",
            "Log in: the access token in the body, the refresh token in its cookie",
            {"200": _ok("logged in", _ref("TokenResponse"))},
            errors=(400, 401, 403, 408, 413, 415, 422, 429, 502, 503),
            security=[],
            description=(
                "Browsers (an `Origin` header) get the refresh token as the `__Host-tg_refresh` "
                "cookie (`tg_refresh` on plain-HTTP localhost). A request with a present, "
                "foreign `Origin` (`null` included) is refused. With a `DPoP` proof the session "
                "is bound to the client's key; without `Origin` the bound refresh token comes "
                "in the body."
            ),
            body=_body(_ref("Credentials")),
        )
    },
    "/api/v1/auth/refresh": {
        "post": _operation(
            "refresh",
            "Rotate the refresh token; a new access token",
            {"200": _ok("rotated", _ref("TokenResponse"))},
            errors=(400, 401, 403, 408, 413, 415, 422, 429, 503),
            security=_REFRESH_AUTH,
            description=(
                "Cookie mode: the refresh cookie and an allowed `Origin`. DPoP body mode: "
                "`{refresh_token}` and a proof. A reused token revokes its whole family."
            ),
            body=_body(_ref("RefreshBody"), required=False),
        )
    },
    "/api/v1/auth/logout": {
        "post": _operation(
            "logout",
            "End this session (its family) and clear the cookie",
            {"204": {"description": "logged out (also when there was nothing to end)"}},
            errors=(400, 401, 403, 408, 413, 415, 422, 503),
            security=_REFRESH_AUTH,
            body=_body(_ref("RefreshBody"), required=False),
        )
    },
    "/api/v1/auth/logout-all": {
        "post": _operation(
            "logoutAll",
            "End every session of the caller",
            {"204": {"description": "every session ended"}},
            errors=(400, 401, 408, 413, 415, 503),
        )
    },
    "/api/v1/auth/password": {
        "post": _operation(
            "changePassword",
            "Change the caller's password; every other session ends",
            {"200": _ok("changed; the caller's new tokens", _ref("TokenResponse"))},
            errors=(400, 401, 403, 408, 413, 415, 422, 429, 502, 503),
            description=(
                "The caller's session carries on under a new id: the answer holds a new access "
                "token and sets a new refresh cookie (or, for a DPoP body-mode client, returns "
                "the new bound refresh token), and every other session of the user ends at "
                "once. A wrong `current_password` is a bare 403 (not 401: nothing to refresh) "
                "and counts against the per-account login limit. An `Origin` header, when "
                "present, must be allowed."
            ),
            body=_body(_ref("PasswordChange")),
        )
    },
    "/api/v1/auth/sessions": {
        "get": _operation(
            "listSessions",
            "The caller's live sessions",
            {"200": _ok("sessions", _ref("SessionList"))},
            # the account's session epoch is read from the backend (sessions an operator ended)
            errors=(400, 401, 502, 503),
        )
    },
    "/api/v1/auth/sessions/{session_id}": {
        "delete": _operation(
            "deleteSession",
            "End one of the caller's sessions",
            {"204": {"description": "ended"}},
            errors=(400, 401, 404, 408, 413, 415, 503),
            parameters=[_id_parameter("session_id")],
        )
    },
    "/api/v1/auth/events": {
        "get": _operation(
            "ownEvents",
            "The caller's own recent security events, newest first",
            {"200": _ok("a page of events", _ref("AuditPage"))},
            errors=(400, 401, 422, 503),
            parameters=_audit_parameters("type", "after", "limit", max_limit=EVENTS_MAX_LIMIT),
        )
    },
    "/api/v1/admin/audit": {
        "get": _operation(
            "adminAudit",
            "The audit trail (the admin role), newest first, paged by cursor",
            {"200": _ok("a page of events", _ref("AuditPage"))},
            errors=(400, 401, 403, 422, 503),
            description=(
                "Answered by the gateway itself, never proxied. `after=<next>` gives the "
                "following (older) page; events written meanwhile never shift a page. `limit` "
                "is at most AUDIT_QUERY_MAX_LIMIT (default 200)."
            ),
            parameters=_audit_parameters(
                "user", "type", "outcome", "since", "until", "after", "limit", max_limit=200
            ),
        )
    },
    "/api/v1/me": {
        "get": _operation(
            "me",
            "The caller (proxied to the backend's /v1/me)",
            {"200": _ok("the caller", _ref("User"))},
            errors=_PROXY_ERRORS,
        )
    },
    "/api/v1/users": {
        "get": _operation(
            "listUsers",
            "Every user, a page at a time (admin role)",
            {"200": _ok("a page of users", _ref("UserPage"))},
            errors=(*_PROXY_ERRORS, 403, 422),
            parameters=_page_parameters(),
        )
    },
    "/api/v1/notes": {
        "get": _operation(
            "listNotes",
            "The caller's notes, newest first",
            {"200": _ok("a page of notes", _ref("NotePage"))},
            errors=(*_PROXY_ERRORS, 422),
            parameters=_page_parameters(),
        ),
        "post": _operation(
            "createNote",
            "Create a note",
            {"201": _ok("created", _ref("Note"))},
            errors=(*_PROXY_ERRORS, 408, 413, 415, 422),
            body=_body(_ref("NewNote")),
        ),
    },
    "/api/v1/notes/{note_id}": {
        "parameters": [_id_parameter("note_id")],
        "get": _operation(
            "getNote",
            "One of the caller's notes",
            {"200": _ok("the note", _ref("Note"))},
            errors=_PROXY_ERRORS,
        ),
        "patch": _operation(
            "updateNote",
            "Change a note's title or body",
            {"200": _ok("the changed note", _ref("Note"))},
            errors=(*_PROXY_ERRORS, 408, 413, 415, 422),
            body=_body(_ref("NoteChanges")),
        ),
        "delete": _operation(
            "deleteNote",
            "Delete a note",
            {"204": {"description": "deleted"}},
            errors=(*_PROXY_ERRORS, 408, 413, 415),
        ),
    },
}


_DPOP_HEADER: Json = {
    "name": "DPoP",
    "in": "header",
    "required": False,
    "description": (
        "A DPoP proof JWT (RFC 9449 §4): `typ: dpop+jwt`, `alg` one of "
        f"{', '.join(ALGORITHMS)}, the public `jwk`; claims `jti`, `htm`, `htu` (the gateway's "
        "`PUBLIC_ORIGIN` plus this path), `iat`, and `ath` with an access token. Required with "
        "`Authorization: DPoP` and for body-mode refresh and logout; at login it binds the session."
    ),
    "schema": {"type": "string", "maxLength": 4096},
}


def _with_dpop_header(paths: Json) -> Json:
    """Every operation that accepts a DPoP proof (login and the ``dpop`` security scheme)
    documents the ``DPoP`` header once, by reference."""
    for path, item in paths.items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if {"dpop": []} in operation.get("security", []) or path == "/api/v1/auth/login":
                operation.setdefault("parameters", []).append(
                    {"$ref": "#/components/parameters/DPoP"}
                )
    return paths


def document() -> Json:
    """A fresh copy of the document (callers may not change the shared one)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tokengate",
            "version": "1",
            "description": (
                "The public API of the tokengate gateway: login and sessions, and the backend's "
                "routes proxied under /api/v1/. Every error is "
                '`{"error": {"code", "message"}}`. JSON bodies must be `application/json`.'
            ),
        },
        "paths": _with_dpop_header(_deep_copy(_PATHS)),
        "components": {
            "parameters": {"DPoP": _DPOP_HEADER},
            "schemas": _deep_copy(_SCHEMAS),
            "responses": {
                f"E{status}": {"description": text, "content": _json(_ref("Error"))}
                for status, text in _ERROR_TEXT.items()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from login or refresh (RFC 6750).",
                },
                "dpop": {
                    "type": "http",
                    "scheme": "DPoP",
                    "description": (
                        "A DPoP-bound access token with a `DPoP` proof header per request "
                        "(RFC 9449); on login, refresh and logout the proof alone. Proof "
                        f"algorithms: {', '.join(ALGORITHMS)}. A bound token sent as `Bearer` is "
                        "refused. Errors: `WWW-Authenticate: DPoP error=..., algs=...`; with "
                        "`DPOP_NONCE_REQUIRED` a `use_dpop_nonce` error carries the nonce in "
                        "`DPoP-Nonce`."
                    ),
                },
                "refreshCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "__Host-tg_refresh",
                    "description": "`tg_refresh` on plain-HTTP localhost; needs an allowed Origin.",
                },
            },
        },
    }


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


async def openapi(request: Request) -> Response:
    return JSONResponse(document(), headers={"Cache-Control": "no-cache"})


def route() -> Route:
    return Route(PATH, openapi, methods=["GET"])
