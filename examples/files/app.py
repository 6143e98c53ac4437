"""The files service: a few routes the example policy (``examples/gateway.toml``) covers.

- ``GET  /v1/files/public/{name}``: public read; the one route that accepts the gateway's
  anonymous scope (``TokenScope.ANONYMOUS``), and a user's token too;
- ``GET  /v1/files/docs/{name}``: authenticated read (``user_request`` only);
- ``PUT  /v1/files/docs/{name}``, ``DELETE``: admin write, checked here as well (defence in
  depth: the gateway's rule ``files-admin-write`` is not the only guard; the gateway's
  ``no-file-deletes`` stops deletes before they arrive).

Every request needs a valid internal token for this service's audience (``FILES_ID``, default
``tokengate-files``), bound to its method and path, used once (the verifier's single-use cache is
on); a token the gateway minted for the backend's audience is refused. The service holds the
gateway's public key(s) only: ``INTERNAL_JWT_PUBLIC_KEY`` (PEM, several allowed during a
rotation) or ``INTERNAL_JWT_PUBLIC_KEY_FILE``.

Run: ``python -m examples.files --host 127.0.0.1 --port 8002`` from the repository root, or
``uvicorn examples.files.app:app`` (the app is built from the environment when first asked for).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from internal_auth import (
    InternalAuthMiddleware,
    KeyLoadError,
    KeySet,
    Principal,
    Reason,
    RemoteKeySet,
    TokenScope,
    Verifier,
    get_principal,
    load_public_keys,
    load_public_keys_file,
)
from starlette.exceptions import HTTPException

logger = logging.getLogger("examples.files")

#: Largest document a PUT may store (bytes); the in-memory store holds at most MAX_DOCUMENTS.
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_DOCUMENTS = 1000


class ConfigError(Exception):
    """A variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class FilesSettings:
    keys: KeySet
    gateway_id: str = "tokengate-gateway"
    audience: str = "tokengate-files"
    #: the gateway's published key set (``INTERNAL_JWKS_URL``, plain HTTP: its signed copy is
    #: checked against ``keys``); ``None``: the pinned keys only
    jwks_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FilesSettings:
        pem, path = (
            environ.get("INTERNAL_JWT_PUBLIC_KEY"),
            environ.get("INTERNAL_JWT_PUBLIC_KEY_FILE"),
        )
        if bool(pem) == bool(path):
            raise ConfigError("set one of INTERNAL_JWT_PUBLIC_KEY or INTERNAL_JWT_PUBLIC_KEY_FILE")
        try:
            keys = load_public_keys(pem) if pem else load_public_keys_file(str(path))
        except (KeyLoadError, OSError):
            raise ConfigError(
                "INTERNAL_JWT_PUBLIC_KEY is not a valid Ed25519 public key (PEM)"
            ) from None
        jwks_url = environ.get("INTERNAL_JWKS_URL") or None
        if jwks_url is not None and not (
            jwks_url.startswith("http://") and jwks_url.endswith("/jwks.json")
        ):
            raise ConfigError(
                "INTERNAL_JWKS_URL must be the gateway's http://.../.well-known/jwks.json (the "
                "signed copy beside it is what is fetched and checked)"
            )
        return cls(
            keys=keys,
            gateway_id=environ.get("GATEWAY_ID") or "tokengate-gateway",
            audience=environ.get("FILES_ID") or "tokengate-files",
            jwks_url=jwks_url,
        )


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def caller(request: Request) -> Principal:
    """The principal :class:`InternalAuthMiddleware` verified (fails closed without it)."""
    return get_principal(request)


Caller = Annotated[Principal, Depends(caller)]


def _who(principal: Principal) -> dict[str, Any]:
    return {
        "sub": principal.sub,
        "scope": principal.scope.value,
        "roles": list(principal.roles),
        "pol": principal.pol,
    }


def create_app(settings: FilesSettings) -> FastAPI:
    documents: dict[str, str] = {"readme": "the public readme"}
    public: dict[str, str] = {"readme": "anyone may read this"}
    # The pinned keys, plus (INTERNAL_JWKS_URL) the gateway's published set: a rotation reaches
    # this service with no change to its environment (internal_auth.RemoteKeySet).
    keys: KeySet = settings.keys
    remote = RemoteKeySet(settings.keys, settings.jwks_url) if settings.jwks_url else None
    if remote is not None:
        keys = remote

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if remote is not None:
            await remote.start()
        try:
            yield
        finally:
            if remote is not None:
                await remote.close()

    app = FastAPI(
        title="files (example service)",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    def on_reject(reason: Reason, scope: Any, iss: str | None) -> None:
        # the reason stays here, in the service's own log; the caller gets a generic 401/403
        logger.warning("internal_token_rejected reason=%s path=%s", reason.value, scope.get("path"))

    app.add_middleware(
        InternalAuthMiddleware,
        verifier=Verifier(keys, issuer=settings.gateway_id, audience=settings.audience),
        rules=[
            # the public routes opt into the anonymous scope explicitly; nothing else does
            ("/v1/files/public", {TokenScope.USER_REQUEST, TokenScope.ANONYMOUS}),
            ("/v1/files", TokenScope.USER_REQUEST),
        ],
        public_paths=("/healthz",),
        on_reject=on_reject,
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(
            exc.status_code,
            {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error"),
            str(exc.detail),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "validation_error", "request is not valid")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # GET implies HEAD at the gateway (RFC 9110 §9.3.2); FastAPI needs it said
    @app.api_route("/v1/files/public/{name:path}", methods=["GET", "HEAD"])
    async def read_public(name: str, who: Caller) -> Any:
        logger.info("files_request route=public pol=%s scope=%s", who.pol, who.scope.value)
        if name not in public:
            return _error(404, "not_found", "no such file")
        return {"name": name, "content": public[name], "caller": _who(who)}

    @app.api_route("/v1/files/docs/{name:path}", methods=["GET", "HEAD"])
    async def read_doc(name: str, who: Caller) -> Any:
        logger.info("files_request route=docs pol=%s", who.pol)
        if name not in documents:
            return _error(404, "not_found", "no such document")
        return {"name": name, "content": documents[name], "caller": _who(who)}

    @app.put("/v1/files/docs/{name:path}")
    async def write_doc(name: str, request: Request, who: Caller) -> Any:
        if "admin" not in who.roles:
            return _error(403, "forbidden", "admin role required")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                return _error(413, "payload_too_large", "document too large")
        if name not in documents and len(documents) >= MAX_DOCUMENTS:
            return _error(507, "insufficient_storage", "too many documents")
        try:
            documents[name] = body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(422, "validation_error", "document must be UTF-8 text")
        return {"name": name, "size": len(body), "caller": _who(who)}

    @app.delete("/v1/files/docs/{name:path}")
    async def delete_doc(name: str, who: Caller) -> Any:
        if "admin" not in who.roles:
            return _error(403, "forbidden", "admin role required")
        documents.pop(name, None)
        return {"name": name, "deleted": True}

    return app


def app_from_env() -> FastAPI:
    return create_app(FilesSettings.from_env(os.environ))


def __getattr__(name: str) -> Any:
    # PEP 562: ``uvicorn examples.files.app:app`` reads ``app``; building it only then keeps this
    # module importable (by the tests) without the service's environment.
    if name == "app":
        return app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
