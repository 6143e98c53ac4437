"""tokengate_client: a Python client for a tokengate gateway, with tokens bound to its own key.

:class:`DPoPAuth` is an ``httpx.Auth``: give it to any ``httpx.Client`` or ``httpx.AsyncClient``
and every request is signed with a DPoP proof (RFC 9449) from a key only this process holds. It
logs in on the first request, keeps the access and refresh tokens in memory only, refreshes before
the access token expires and after a 401, answers ``use_dpop_nonce`` by retrying with the server's
nonce, and never logs or prints a token::

    auth = DPoPAuth("demo@example.test", password)
    with httpx.Client(base_url="http://127.0.0.1:8000", auth=auth) as api:
        api.get("/api/v1/me")

Library layer: depends on httpx and joserfc only, imports nothing of the services.
"""

from tokengate_client._auth import AuthenticationError, DPoPAuth
from tokengate_client._key import DPoPKey

__all__ = ["AuthenticationError", "DPoPAuth", "DPoPKey"]
