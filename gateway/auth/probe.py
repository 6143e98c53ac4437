"""The readiness probe of a service: does it trust the gateway's internal tokens?

One signed ``GET`` of :data:`internal_auth.PROBE_PATH` with a token of scope ``probe``, which
:class:`internal_auth.InternalAuthMiddleware` answers itself. A 200 proves the service holds the
gateway's public key and agrees on issuer (``GATEWAY_ID``) and audience; a refusal names why.
Reachability alone (``/healthz``) proved neither: a gateway whose key the backend did not hold was
"ready" while every login answered 401 as if the password were wrong.

:func:`probe_service` takes the service's client (its base URL), the minter for its audience and
the gateway's id, so the same function serves every service the gateway calls.
"""

from __future__ import annotations

import httpx
from internal_auth import HEADER, PROBE_PATH, REFUSED_CODE, Minter, Reason, TokenScope

#: What the operator should check when a service refuses the gateway's internal token.
REFUSED_HINT = (
    "check INTERNAL_JWT_PRIVATE_KEY (gateway) / INTERNAL_JWT_PUBLIC_KEY (service) / "
    "GATEWAY_ID / BACKEND_ID, and that both clocks agree"
)

_REASONS = frozenset(r.value for r in Reason)


def refusal_reason(response: httpx.Response) -> str | None:
    """``error.reason`` of a refusal, when it is one of internal_auth's reasons (a service's
    free text never reaches a log line or ``/readyz``); ``None`` otherwise."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or error.get("code") != REFUSED_CODE:
        return None
    reason = error.get("reason")
    return reason if isinstance(reason, str) and reason in _REASONS else "refused"


async def probe_service(
    client: httpx.AsyncClient,
    minter: Minter,
    *,
    gateway_id: str,
    wait: float = 2.0,
    audience: str | None = None,
) -> str | None:
    """``None`` when the service verified a probe token, otherwise why not, in a few words
    that are safe to log and to show in ``/readyz`` (never a token, never the service's text).
    ``audience``: the service's, when it is not the minter's own (a service of GATEWAY_CONFIG
    other than the identity service)."""
    token = minter.mint(
        sub=gateway_id, scope=TokenScope.PROBE, htm="GET", htu=PROBE_PATH, audience=audience
    )
    try:
        response = await client.get(PROBE_PATH, headers={HEADER: token}, timeout=wait)
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    if response.status_code == 200:
        return None
    reason = refusal_reason(response)
    if reason is not None:
        return f"internal token refused: {reason}"
    return f"probe answered {response.status_code}"
