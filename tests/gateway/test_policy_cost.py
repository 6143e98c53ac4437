"""The benchmark's large policy (bench/policy_config.py: 100 services, 1,000 rules) is a valid
file, and a lookup in it examines the few rules that can match the path, never all of them (the
structure the per-request cost of issue 25 rests on; the cost itself: bench/README.md)."""

from __future__ import annotations

from bench.policy_config import large_config
from gateway.policy import Caller, parse_policy

BIG = parse_policy(large_config("http://127.0.0.1:1").encode())


def test_the_large_policy_is_valid_and_large() -> None:
    assert (len(BIG.services), len(BIG.routes), len(BIG.rules)) == (100, 100, 1000)
    assert BIG.decide("GET", "/me", Caller("u", frozenset())).rule == "me"
    assert BIG.service_for("/s42/r5") == "svc42" and BIG.service_for("/me") == "backend"


def test_a_lookup_examines_only_the_rules_of_its_path() -> None:
    for method, path in [
        ("GET", "/me"),
        ("GET", "/s5/r5/x"),
        ("POST", "/s1/r1/x"),
        ("DELETE", "/s3/r3/locked/a"),
        ("PATCH", "/s4/any/item4"),
    ]:
        candidates = BIG._lookup(method, path)
        assert 1 <= len(candidates) <= 3, (method, path, candidates)
    assert BIG._lookup("GET", "/nothing/here") == ()
