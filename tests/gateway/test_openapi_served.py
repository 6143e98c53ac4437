"""GET /api/v1/openapi.json serves the one document the tests check (gateway.openapi)."""

from __future__ import annotations

from gateway import openapi
from tests.gateway.conftest import Harness


async def test_the_gateway_serves_the_same_document(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        r = await client.get(openapi.PATH)
        # no credentials needed, and not mistaken for a proxied backend route
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == openapi.document()
