"""The gateway's system calls to the backend: the credential check behind login.

The call carries an internal token with scope ``auth_validate`` and ``sub`` = the gateway's own id
(no user session yet), bound to ``POST /internal/auth/validate`` so it cannot be replayed on any
other route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from internal_auth import HEADER, Minter, TokenScope
from servicekit.logs import log_event, request_id_var
from servicekit.tracing import outbound_headers

from gateway.errors import BadGateway, InvalidCredentials, ServiceUnavailable

logger = logging.getLogger("gateway.backend_client")

VALIDATE_PATH = "/internal/auth/validate"


@dataclass(frozen=True)
class BackendUser:
    id: str
    email: str
    roles: tuple[str, ...]


class BackendClient:
    def __init__(
        self,
        client: httpx.AsyncClient,
        minter: Minter,
        *,
        gateway_id: str,
    ) -> None:
        self._client = client
        self._minter = minter
        self._gateway_id = gateway_id

    async def validate(self, email: str, password: str) -> BackendUser:
        token = self._minter.mint(
            sub=self._gateway_id, scope=TokenScope.AUTH_VALIDATE, htm="POST", htu=VALIDATE_PATH
        )
        headers = {HEADER: token}
        rid = request_id_var.get()
        if rid is not None:
            # The backend writes it in its audit line, tying the two services' logs together.
            headers["X-Request-Id"] = rid
        headers.update(outbound_headers())
        try:
            response = await self._client.post(
                VALIDATE_PATH,
                json={"email": email, "password": password},
                headers=headers,
            )
        except httpx.HTTPError as exc:
            log_event(logger, "backend_unreachable", logging.WARNING, error=type(exc).__name__)
            raise ServiceUnavailable("the login service is unavailable, retry later") from None
        if response.status_code == 401:
            raise InvalidCredentials()
        if response.status_code >= 500:
            log_event(logger, "backend_error", logging.WARNING, status=response.status_code)
            raise ServiceUnavailable("the login service is unavailable, retry later")
        if response.status_code != 200:
            # 403/422 from the backend mean the gateway and backend disagree on the contract
            # (keys, scope, body): an operator problem, not the user's.
            log_event(logger, "backend_rejected", logging.ERROR, status=response.status_code)
            raise BadGateway()
        try:
            data = response.json()
            user = BackendUser(
                id=str(data["id"]),
                email=str(data["email"]),
                roles=tuple(str(r) for r in data.get("roles", ["user"])),
            )
        except (ValueError, KeyError, TypeError):
            raise BadGateway() from None
        return user

    async def ready(self) -> bool:
        try:
            response = await self._client.get("/healthz", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
