"""``app.state`` is a :class:`gateway.state.GatewayState`; once started, the gateway has set every
attribute it declares, each of its declared type."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.requests import Request

from gateway.state import GatewayState, gateway_state, scope_state
from tests.gateway.conftest import Harness
from tests.support.app_state import state_problems


async def test_started_gateway_sets_every_declared_attribute(
    gateway: Harness, env: dict[str, str]
) -> None:
    async with gateway(env) as client:
        state = client.app.state
        assert isinstance(state, GatewayState)
        assert state_problems(state) == []
        assert (await client.get("/readyz")).status_code == 200


def test_an_app_not_built_by_create_app_is_refused() -> None:
    scope = {"type": "http", "app": Starlette()}
    with pytest.raises(RuntimeError, match="not a GatewayState"):
        scope_state(scope)
    with pytest.raises(RuntimeError, match="not a GatewayState"):
        gateway_state(Request(scope))


class _Probe(State):
    number: int
    name: str
    maybe: int | None


def test_state_problems_names_unset_and_mistyped_attributes() -> None:
    """The checker itself: it must flag what the test above relies on it to flag."""
    probe = _Probe()
    probe["number"] = "one"  # past the type checker, as a careless lifespan would
    probe.maybe = None
    assert state_problems(probe) == ["name: not set", "number: str, declared <class 'int'>"]
    probe.number, probe.name = 1, "one"
    assert state_problems(probe) == []
    probe["nmber"] = 1
    assert state_problems(probe) == ["nmber: set but not declared"]
    assert state_problems(State()) == ["State declares no attributes"]
