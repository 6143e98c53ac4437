"""Every internal call the gateway makes tells "the service does not trust my token" (an
operator's problem: 502 and an error line) from the user's own mistakes (issue 23)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from internal_auth import PROBE_PATH, Minter, PrivateKey, generate_private_key

from gateway.auth.backend_client import BackendClient
from gateway.errors import InvalidCredentials, MisconfiguredService
from tests.gateway.conftest import PASSWORD, FakeBackend

Call = Callable[[BackendClient], Awaitable[Any]]

CALLS: dict[str, Call] = {
    "validate": lambda c: c.validate("someone@example.test", PASSWORD),
    "lifecycle": lambda c: c.lifecycle("7c6f7e39-2b0b-4a43-9a39-9d7b5f1f7e11"),
    "epochs": lambda c: c.epochs_since(0),
    "password": lambda c: c.change_password("7c6f7e39-2b0b-4a43-9a39-9d7b5f1f7e11", "a", "b"),
}


def _client(
    backend: FakeBackend, key: PrivateKey, paths: list[str] | None = None, **ids: str
) -> BackendClient:
    async def record(request: httpx.Request) -> None:
        if paths is not None:
            paths.append(request.url.path)

    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=backend.app),
        base_url="http://backend.internal",
        event_hooks={"request": [record]},
    )
    minter = Minter(
        key,
        issuer=ids.get("issuer", "tokengate-gateway"),
        audience=ids.get("audience", "tokengate-backend"),
    )
    return BackendClient(http, minter, gateway_id="tokengate-gateway")


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_a_refused_internal_token_is_502_with_an_operator_line_on_every_call(
    name: str, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(backend, generate_private_key())  # a key the backend does not hold
    with pytest.raises(MisconfiguredService) as raised:
        await CALLS[name](client)
    assert raised.value.status == 502 and raised.value.headers["Retry-After"].isdigit()
    lines = [r for r in caplog.records if r.getMessage() == "internal_token_refused"]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    fields = lines[0].__dict__["fields"]
    assert fields["reason"] == "internal token refused: unknown_kid"
    assert "INTERNAL_JWT_PUBLIC_KEY" in fields["action"]


async def test_a_wave_of_refusals_costs_one_probe(
    backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    paths: list[str] = []
    client = _client(backend, generate_private_key(), paths)
    for _ in range(5):
        with pytest.raises(MisconfiguredService):
            await client.epochs_since(0)
    assert paths.count(PROBE_PATH) == 1 and len(paths) == 6
    assert await client.probe() == "internal token refused: unknown_kid"  # readiness: fresh
    assert paths.count(PROBE_PATH) == 2


async def test_the_probe_names_issuer_and_audience_mismatches(
    backend: FakeBackend, internal_key: PrivateKey
) -> None:
    assert await _client(backend, internal_key).probe() is None
    wrong_issuer = _client(backend, internal_key, issuer="elsewhere")
    assert await wrong_issuer.probe() == "internal token refused: wrong_issuer"
    wrong_audience = _client(backend, internal_key, audience="elsewhere")
    assert await wrong_audience.probe() == "internal token refused: wrong_audience"


async def test_a_trusted_gateway_still_gets_one_401_for_a_wrong_password(
    backend: FakeBackend, internal_key: PrivateKey
) -> None:
    email = backend.add_user()
    client = _client(backend, internal_key)
    with pytest.raises(InvalidCredentials):
        await client.validate(email, "wrong")
    with pytest.raises(InvalidCredentials):
        await client.validate("nobody@example.test", PASSWORD)
