"""``DPoPAuth``: log in, sign every request, refresh, retry on ``use_dpop_nonce`` (RFC 9449)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import httpx

from tokengate_client._key import DPoPKey

_Flow = Generator[httpx.Request, httpx.Response, None]


class AuthenticationError(Exception):
    """Login or refresh failed, or the session ended (logged out, revoked, expired); the message
    names the status and the gateway's error code. A session that ended stays ended: the client
    never logs in again on its own (that would undo a revocation); make a new :class:`DPoPAuth`
    when the application decides to log in again."""


def _error_code(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("code", ""))
    except (ValueError, AttributeError):
        return ""


class DPoPAuth(httpx.Auth):
    """An ``httpx.Auth`` holding a DPoP-bound session with a tokengate gateway.

    - The key (:class:`DPoPKey`, Ed25519 unless given) is made once and kept for the object's
      life; pass ``key=DPoPKey.from_pem(...)`` to keep it across runs.
    - The first request logs in (``POST {auth_prefix}/login`` with a proof, no ``Origin``), so the
      gateway answers with a refresh token in the body, bound to the key. An answer that is not
      DPoP-bound is refused (:class:`AuthenticationError`): this client never runs unbound.
    - Each request gets ``Authorization: DPoP <access token>`` and a fresh proof for its method
      and URL (with ``ath`` and the last server nonce seen).
    - The access token is refreshed ``refresh_margin`` seconds before it expires, and after a 401
      ``invalid_token``. A refresh that is refused means the session ended (logout, a revoke by
      the user or an operator, a password change elsewhere, its lifetime): the request raises
      :class:`AuthenticationError`, and so does every later one. The client never logs in again
      by itself: the password is dropped as soon as the login it was given for succeeds, so a
      revoked session stays revoked.
    - A 401 or 400 ``use_dpop_nonce`` is retried once with the ``DPoP-Nonce`` it carried.
    - :meth:`resume` carries a session on from a refresh token kept by an earlier run (with the
      same key); :attr:`refresh_token` is what to keep. ``tokengate client`` does exactly that.

    Tokens live in this object's memory only; ``repr`` shows none. One object per client;
    concurrent requests that refresh at the same moment are safe (the gateway hands every retry
    inside its grace window the same successor).
    """

    requires_response_body = True

    def __init__(
        self,
        email: str,
        password: str,
        *,
        key: DPoPKey | None = None,
        auth_prefix: str = "/api/v1/auth",
        refresh_margin: float = 30.0,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> None:
        self.key = key or DPoPKey.generate()
        self._timeout: dict[str, Any] = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._email = email
        # kept only until the one login it is for succeeds (or is refused): see _login
        self._password: str | None = password
        self._ended: str | None = None
        self._prefix = auth_prefix.rstrip("/")
        self._margin = refresh_margin
        self._clock = clock
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at = 0.0
        self._nonce: str | None = None

    @classmethod
    def resume(
        cls,
        refresh_token: str,
        *,
        key: DPoPKey,
        email: str = "",
        access_token: str | None = None,
        expires_at: float = 0.0,
        auth_prefix: str = "/api/v1/auth",
        refresh_margin: float = 30.0,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> DPoPAuth:
        """A client for a session an earlier run logged in: its (key-bound) refresh token, the
        key it is bound to, and optionally the last access token and when it expires (epoch
        seconds). No password: when the session ends, it ends."""
        auth = cls(
            email,
            "",
            key=key,
            auth_prefix=auth_prefix,
            refresh_margin=refresh_margin,
            clock=clock,
            timeout=timeout,
        )
        auth._password = None
        auth._refresh = refresh_token
        auth._access = access_token
        auth._expires_at = expires_at if access_token is not None else 0.0
        return auth

    def __repr__(self) -> str:
        if self._ended is not None:
            state = "session ended"
        else:
            state = "logged in" if self._access else "not logged in"
        return f"DPoPAuth(email={self._email!r}, key={self.key!r}, {state})"

    @property
    def logged_in(self) -> bool:
        return self._access is not None

    @property
    def ended(self) -> bool:
        """The session ended (logout, revoked, refused): every request raises from now on."""
        return self._ended is not None

    @property
    def refresh_token(self) -> str | None:
        """The current refresh token (bound to :attr:`key`), to keep for :meth:`resume`. It is
        rotated on every refresh: keep the newest one, with the care of a password."""
        return self._refresh

    @property
    def access_token(self) -> str | None:
        return self._access

    @property
    def expires_at(self) -> float:
        """When :attr:`access_token` expires (epoch seconds, the client's clock)."""
        return self._expires_at

    # -- the flow httpx drives ---------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> _Flow:
        if self._ended is not None:
            raise AuthenticationError(self._ended)
        if self._access is None:
            if self._refresh is not None:
                yield from self._renew(request.url)
            else:
                yield from self._login(request.url)
        elif self._clock() >= self._expires_at - self._margin:
            yield from self._renew(request.url)
        response = yield self._signed(request)
        self._remember_nonce(response)
        for _ in range(2):
            if response.status_code != 401:
                return
            challenge = response.headers.get("www-authenticate", "")
            if "use_dpop_nonce" in challenge and response.headers.get("dpop-nonce"):
                pass  # the nonce is remembered: sign again
            elif 'error="invalid_token"' in challenge:
                yield from self._renew(request.url)
            else:
                return
            response = yield self._signed(request)
            self._remember_nonce(response)

    # -- explicit steps (a command line drives these one at a time) -----------------------------

    def login(self, client: httpx.Client) -> None:
        """Log in now (the first request does it otherwise); raises :class:`AuthenticationError`."""
        self._drive(client, self._login(client.base_url))

    def refresh(self, client: httpx.Client) -> None:
        """Rotate the refresh token now; raises :class:`AuthenticationError` if the session
        ended (and it stays ended)."""
        self._drive(client, self._renew(client.base_url))

    async def alogin(self, client: httpx.AsyncClient) -> None:
        """:meth:`login` for an ``httpx.AsyncClient``."""
        await self._adrive(client, self._login(client.base_url))

    async def arefresh(self, client: httpx.AsyncClient) -> None:
        """:meth:`refresh` for an ``httpx.AsyncClient``."""
        await self._adrive(client, self._renew(client.base_url))

    @staticmethod
    def _drive(client: httpx.Client, flow: _Flow) -> None:
        try:
            request = next(flow)
            while True:
                request = flow.send(client.send(request, auth=None))
        except StopIteration:
            return

    @staticmethod
    async def _adrive(client: httpx.AsyncClient, flow: _Flow) -> None:
        try:
            request = next(flow)
            while True:
                request = flow.send(await client.send(request, auth=None))
        except StopIteration:
            return

    # -- logout ----------------------------------------------------------------------------

    def logout(self, client: httpx.Client) -> None:
        """End the session on the gateway (body-mode logout with a proof) and forget it."""
        request = self._logout_request(client)
        if request is None:
            self._end("logged out")
            return
        response = client.send(request, auth=None)
        if self._remember_nonce(response) and _error_code(response) == "use_dpop_nonce":
            response = client.send(self._logout_request(client) or request, auth=None)
        self._end("logged out")
        if response.status_code != 204:
            raise AuthenticationError(f"logout failed: {response.status_code}")

    async def alogout(self, client: httpx.AsyncClient) -> None:
        """:meth:`logout` for an ``httpx.AsyncClient``."""
        request = self._logout_request(client)
        if request is None:
            self._end("logged out")
            return
        response = await client.send(request, auth=None)
        if self._remember_nonce(response) and _error_code(response) == "use_dpop_nonce":
            response = await client.send(self._logout_request(client) or request, auth=None)
        self._end("logged out")
        if response.status_code != 204:
            raise AuthenticationError(f"logout failed: {response.status_code}")

    def _logout_request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request | None:
        if self._refresh is None:
            return None
        request = client.build_request(
            "POST", self._prefix + "/logout", json={"refresh_token": self._refresh}
        )
        request.headers["DPoP"] = self.key.proof("POST", str(request.url), nonce=self._nonce)
        return request

    # -- internals ---------------------------------------------------------------------------

    def _signed(self, request: httpx.Request) -> httpx.Request:
        if self._access is None:  # every caller logs in first
            raise RuntimeError("no access token to sign with")
        request.headers["Authorization"] = f"DPoP {self._access}"
        request.headers["DPoP"] = self.key.proof(
            request.method, str(request.url), access_token=self._access, nonce=self._nonce
        )
        return request

    def _remember_nonce(self, response: httpx.Response) -> bool:
        nonce = response.headers.get("dpop-nonce")
        if nonce:
            self._nonce = nonce
            return True
        return False

    def _auth_call(
        self, base: httpx.URL, name: str, body: dict[str, Any]
    ) -> Generator[httpx.Request, httpx.Response, httpx.Response]:
        """POST to an auth endpoint with a proof; once more if the gateway asks for a nonce."""
        url = base.copy_with(path=f"{self._prefix}/{name}", query=None, fragment=None)
        response: httpx.Response | None = None
        for _ in range(2):
            proof = self.key.proof("POST", str(url), nonce=self._nonce)
            # a request made here gets no timeout from the client: give it one (never hang)
            response = yield httpx.Request(
                "POST", url, json=body, headers={"DPoP": proof}, extensions=self._timeout
            )
            fresh_nonce = self._remember_nonce(response)
            if not (fresh_nonce and _error_code(response) == "use_dpop_nonce"):
                break
        if response is None:  # the loop above runs at least once
            raise RuntimeError("no response")
        return response

    def _login(self, base: httpx.URL) -> _Flow:
        if self._password is None:  # the one login this object was given a password for is done
            raise AuthenticationError(self._ended or "no session: log in with a new DPoPAuth")
        response = yield from self._auth_call(
            base, "login", {"email": self._email, "password": self._password}
        )
        if response.status_code != 200:
            message = f"login failed: {response.status_code} {_error_code(response)}".strip()
            if response.status_code in (401, 403):
                # refused credentials are not tried again: each try would count as a failure
                # against the account's login limit. A 429 or a 5xx may be retried later.
                self._end(message)
            raise AuthenticationError(message)
        # The password has done its job: a client that kept it could log in again after a
        # logout or a revoke and silently undo it (issue 24, item 9).
        self._password = None
        self._store(response)

    def _renew(self, base: httpx.URL) -> _Flow:
        if self._refresh is None:
            yield from self._login(base)
            return
        response = yield from self._auth_call(base, "refresh", {"refresh_token": self._refresh})
        if response.status_code == 200:
            self._store(response)
        elif response.status_code == 401:
            # the session ended (expired, revoked, logged out elsewhere): it stays ended
            message = f"session ended: {response.status_code} {_error_code(response)}".strip()
            self._end(message)
            raise AuthenticationError(message)
        else:
            raise AuthenticationError(
                f"refresh failed: {response.status_code} {_error_code(response)}".strip()
            )

    def _store(self, response: httpx.Response) -> None:
        body = response.json()
        if body.get("token_type") != "DPoP" or not body.get("refresh_token"):
            # never carry on with an unbound session (a gateway without PUBLIC_ORIGIN, a proxy
            # that dropped the DPoP header, ...): fail loudly instead
            self._end("the gateway did not bind the session to this key")
            raise AuthenticationError("the gateway did not bind the session to this key")
        self._access = str(body["access_token"])
        self._refresh = str(body["refresh_token"])
        self._expires_at = self._clock() + float(body.get("expires_in", 0))

    def _end(self, reason: str) -> None:
        """Forget the tokens and the password; every later request raises ``reason``."""
        self._access = None
        self._refresh = None
        self._expires_at = 0.0
        self._password = None
        self._ended = reason
