"""The gateway's system calls to the backend: the credential check behind login, the account
lifecycle check behind every refresh, and a user's own password change.

Each call carries an internal token with ``sub`` = the gateway's own id, the scope of its kind
of call (``auth_validate`` for credentials, ``refresh_lifecycle`` for an account's status, roles
and epochs), bound to that exact method and path so it cannot be replayed on any other route.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from internal_auth import HEADER, REFUSED_CODE, Minter, TokenScope
from servicekit.epochs import EpochUpdate
from servicekit.logs import log_event, request_id_var
from servicekit.tracing import outbound_headers

from gateway.auth.probe import REFUSED_HINT, probe_service
from gateway.errors import (
    BadGateway,
    Forbidden,
    InvalidCredentials,
    MisconfiguredService,
    ServiceUnavailable,
    ValidationFailed,
)

logger = logging.getLogger("gateway.backend_client")

VALIDATE_PATH = "/internal/auth/validate"
#: on a refused credential check, the account the backend matched and why (docs/AUDIT.md)
AUDIT_SUBJECT_HEADER = "x-audit-subject"
AUDIT_REASON_HEADER = "x-audit-reason"
#: the client of a relayed password change, for the backend's audit event
AUDIT_IP_HEADER = "x-audit-client-ip"
AUDIT_UA_HEADER = "x-audit-user-agent"
PASSWORD_PATH = "/internal/auth/password"
LIFECYCLE_PATH = "/internal/lifecycle/users/"
EPOCHS_PATH = "/internal/lifecycle/epochs"

#: Seconds a probe's answer explains later refusals: a wave of logins against a backend that
#: refuses the gateway's key costs one probe, not one per login.
PROBE_MEMO_SECONDS = 5.0


@dataclass(frozen=True)
class BackendUser:
    """An account as the backend sees it now."""

    id: str
    email: str
    roles: tuple[str, ...]
    active: bool = True
    session_epoch: int = 0
    token_epoch: int = 0

    @property
    def epochs(self) -> EpochUpdate:
        return EpochUpdate(self.id, self.session_epoch, self.token_epoch)


def _epoch(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError("epoch")
    return value


def _user(data: Any) -> BackendUser:
    try:
        roles = data.get("roles", ["user"])
        if not isinstance(roles, list):
            raise TypeError("roles")
        return BackendUser(
            id=str(data["id"]),
            email=str(data["email"]),
            roles=tuple(str(r) for r in roles),
            # fail closed: anything but an explicit "active" is a disabled account
            active=data.get("status", "active") == "active",
            session_epoch=_epoch(data.get("session_epoch", 0)),
            token_epoch=_epoch(data.get("token_epoch", 0)),
        )
    except (AttributeError, KeyError, TypeError):
        raise BadGateway() from None


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


class BackendClient:
    def __init__(
        self,
        client: httpx.AsyncClient,
        minter: Minter,
        *,
        gateway_id: str,
        epochs_page_size: int = 1000,
    ) -> None:
        self._client = client
        self._minter = minter
        self._gateway_id = gateway_id
        self._epochs_page_size = epochs_page_size
        self._probed: tuple[float, str | None] | None = None

    async def _call(
        self,
        method: str,
        path: str,
        scope: TokenScope,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        unavailable: str,
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        token = self._minter.mint(sub=self._gateway_id, scope=scope, htm=method, htu=path)
        headers = {**(extra_headers or {}), HEADER: token}
        rid = request_id_var.get()
        if rid is not None:
            # The backend writes it in its audit line, tying the two services' logs together.
            headers["X-Request-Id"] = rid
        headers.update(outbound_headers())
        try:
            response = await self._client.request(
                method, path, json=json, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            log_event(logger, "backend_unreachable", logging.WARNING, error=type(exc).__name__)
            raise ServiceUnavailable(unavailable) from None
        if response.status_code >= 500:
            log_event(logger, "backend_error", logging.WARNING, status=response.status_code)
            raise ServiceUnavailable(unavailable)
        if response.status_code == 401 and _error_code(response) == REFUSED_CODE:
            raise await self.refused(path)
        return response

    async def refused(
        self, path: str, *, service: str | None = None, identity: bool = True
    ) -> MisconfiguredService:
        """The 502 for a call the identity service refused the internal token of, after the
        operator's ERROR line (with the probe's reason). The proxy calls it too."""
        # The identity service does not trust this gateway's token: keys, ids or clocks disagree.
        # Never the user's fault, so never a 401 that reads like a wrong password; the probe
        # says which check failed (an ordinary refusal does not, by design of internal_auth).
        # the probe asks the identity service; another service's reason is in its own log
        reason = await self.probe(memo=True) if identity else "see that service's log"
        log_event(
            logger,
            "internal_token_refused",
            logging.ERROR,
            message="a service refused the gateway's internal token",
            service=service,
            path=path,
            reason=reason or "the probe passes; the refusal is specific to this call",
            action=REFUSED_HINT,
        )
        return MisconfiguredService()

    @staticmethod
    def _rejected(response: httpx.Response) -> BadGateway:
        # 403/422 from the backend mean the gateway and backend disagree on the contract
        # (keys, scope, body): an operator problem, not the user's.
        log_event(logger, "backend_rejected", logging.ERROR, status=response.status_code)
        return BadGateway()

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise BadGateway() from None

    async def validate(self, email: str, password: str) -> BackendUser:
        response = await self._call(
            "POST",
            VALIDATE_PATH,
            TokenScope.AUTH_VALIDATE,
            json={"email": email, "password": password},
            unavailable="the login service is unavailable, retry later",
        )
        # Only the backend's own answer: any other 401 is not about the user's password.
        if response.status_code == 401 and _error_code(response) == "invalid_credentials":
            refused = InvalidCredentials()
            # internal headers, for the audit event; the public answer stays the generic 401
            refused.subject = response.headers.get(AUDIT_SUBJECT_HEADER)
            refused.reason = response.headers.get(AUDIT_REASON_HEADER, "password")[:32]
            raise refused
        if response.status_code != 200:
            raise self._rejected(response)
        user = _user(self._json(response))
        if not user.active:
            refused = InvalidCredentials()
            refused.subject, refused.reason = user.id, "disabled"
            raise refused
        return user

    async def lifecycle(self, user_id: str) -> BackendUser | None:
        """The account's current status, roles and epochs; ``None`` if it no longer exists.
        Raises :class:`ServiceUnavailable` (503 + ``Retry-After``) when the backend cannot say."""
        response = await self._call(
            "GET",
            LIFECYCLE_PATH + quote(user_id, safe=""),
            TokenScope.REFRESH_LIFECYCLE,
            unavailable="the account service is unavailable, retry later",
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._rejected(response)
        user = _user(self._json(response))
        if user.id != user_id:
            raise BadGateway()
        return user

    async def epochs_since(self, since: int) -> list[EpochUpdate]:
        """Every account whose epochs moved at or after ``since`` (Unix seconds), page by page
        (``EPOCH_RELOAD_PAGE_SIZE`` accounts each), following the backend's cursor to the end."""
        updates: list[EpochUpdate] = []
        after: str | None = None
        last: tuple[int, str] | None = None
        while True:
            params = {"since": str(max(since, 0)), "limit": str(self._epochs_page_size)}
            if after is not None:
                params["after"] = after
            response = await self._call(
                "GET",
                EPOCHS_PATH,
                TokenScope.REFRESH_LIFECYCLE,
                params=params,
                unavailable="the account service is unavailable",
            )
            if response.status_code != 200:
                raise self._rejected(response)
            data = self._json(response)
            try:
                page = [
                    EpochUpdate(
                        str(item["id"]), _epoch(item["session_epoch"]), _epoch(item["token_epoch"])
                    )
                    for item in data["epochs"]
                ]
                following = data.get("next")
                paged = "next" in data
            except (AttributeError, KeyError, TypeError):
                raise BadGateway() from None
            if not paged:  # a backend from before paging: one answer, newest first
                return updates + page
            # Pages come in (token epoch, id) order: each account must follow the one before,
            # across pages too, or a broken backend (a cursor that repeats or goes back) could
            # keep this loop going for ever.
            for update in page:
                key = (update.token_epoch, update.user_id)
                if last is not None and key <= last:
                    raise BadGateway()
                last = key
            updates.extend(page)
            if following is None:  # the last page
                return updates
            if not isinstance(following, str) or not page:
                raise BadGateway()
            after = following

    async def change_password(
        self, user_id: str, current: str, new: str, *, ip: str | None = None, ua: str | None = None
    ) -> BackendUser:
        """Raises :class:`Forbidden` when the current password is wrong (and nothing more).
        ``ip`` and ``ua`` (the client's, as the rate limiter sees it) go to the backend's audit
        event of the change, which it writes in the change's transaction."""
        client = {AUDIT_IP_HEADER: ip or "", AUDIT_UA_HEADER: (ua or "")[:256]}
        response = await self._call(
            "POST",
            PASSWORD_PATH,
            TokenScope.AUTH_VALIDATE,
            json={"user_id": user_id, "current_password": current, "new_password": new},
            unavailable="the account service is unavailable, retry later",
            extra_headers={k: v for k, v in client.items() if v},
        )
        if response.status_code == 403 and _error_code(response) == "current_password_rejected":
            raise Forbidden()
        if response.status_code == 422:
            raise ValidationFailed("new_password is not acceptable")
        if response.status_code != 200:
            raise self._rejected(response)
        return _user(self._json(response))

    async def ready(
        self, service_url: str | None = None, *, tls: ssl.SSLContext | None = None
    ) -> bool:
        """The identity service's ``/healthz`` answers 200 (or, given ``service_url``, another
        service's: readiness lists them without depending on them; ``tls``: that service's own
        CA and client certificate, on a client of its own)."""
        url = "/healthz" if service_url is None else service_url + "/healthz"
        try:
            if tls is None:
                response = await self._client.get(url, timeout=2.0)
            else:
                async with httpx.AsyncClient(verify=tls, timeout=2.0) as client:
                    response = await client.get(url)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def probe_other(
        self, service_url: str, audience: str, *, tls: ssl.SSLContext | None = None
    ) -> bool | str:
        """``True`` when another service (``probe = true`` in GATEWAY_CONFIG) verifies a signed
        probe for its audience, else why not; on a client of its own, with its TLS."""
        async with httpx.AsyncClient(
            base_url=service_url, verify=tls if tls is not None else True, timeout=2.0
        ) as client:
            reason = await probe_service(
                client, self._minter, gateway_id=self._gateway_id, audience=audience
            )
        return True if reason is None else reason

    async def probe(self, *, memo: bool = False) -> str | None:
        """``None`` when the identity service trusts this gateway's internal tokens, else why
        not (:func:`gateway.auth.probe.probe_service`). ``memo``: reuse an answer younger than
        :data:`PROBE_MEMO_SECONDS`."""
        now = time.monotonic()
        if memo and self._probed is not None and now - self._probed[0] < PROBE_MEMO_SECONDS:
            return self._probed[1]
        reason = await probe_service(self._client, self._minter, gateway_id=self._gateway_id)
        self._probed = (now, reason)
        return reason
