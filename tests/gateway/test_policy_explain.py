"""``explain`` (what ``tokengate policy explain`` and ``test`` print) agrees with what the proxy
does, as a property: for any path a client could send, it refuses exactly what
gateway/proxy/paths.py refuses, and otherwise its verdict, deciding rule and per-rule matches are
those of ``Policy.decide`` on the same canonical path (an explanation that disagreed with the
gateway would mislead the operator it is for)."""

from __future__ import annotations

from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.policy import Caller
from gateway.policy.explain import explain
from gateway.proxy.paths import BACKEND_PREFIX, backend_path
from tests.gateway.test_policy_properties import _PATH, CALLERS, METHODS, POLICY


@settings(max_examples=300, deadline=None)
@given(path=_PATH, method=st.sampled_from(METHODS), caller=st.sampled_from(CALLERS))
def test_explain_agrees_with_the_proxy_and_the_policy(
    path: str, method: str, caller: Caller | None
) -> None:
    rules_path = path[len("/api/v1") :]
    result = explain(POLICY, method, rules_path, caller)
    try:
        target = backend_path(path.encode("ascii"), unquote(path))
    except GatewayError as exc:
        assert result.refused is not None and result.refused.startswith(str(exc.status))
        assert not result.allowed and result.traces == ()
        return
    canonical = target.path[len(BACKEND_PREFIX) - 1 :]
    assert result.refused is None and result.path == canonical
    decision = POLICY.decide(method, canonical, caller)
    routed = POLICY.service_for(canonical) is not None
    assert result.allowed == (decision.allowed and routed)
    if result.allowed:
        assert result.deciding == (decision.rule,)
    assert (result.route is not None) == routed
