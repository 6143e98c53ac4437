"""The proxy's memo of verified access tokens answers exactly as verification would."""

from __future__ import annotations

import pytest

from gateway.auth.tokens import AccessClaims
from gateway.auth.verified_tokens import VerifiedTokens
from gateway.errors import InvalidToken

NOW = 1_800_000_000.0


class Verifier:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, token: str) -> AccessClaims:
        self.calls += 1
        if not token.startswith("good"):
            raise InvalidToken()
        return AccessClaims(sub="u", sid="s", roles=("user",), jti=token, iat=0, exp=int(NOW) + 60)


def test_second_use_is_not_verified_again() -> None:
    verifier = Verifier()
    memo = VerifiedTokens(verifier, clock=lambda: NOW)
    assert memo.verify("good-1") == memo.verify("good-1")
    assert verifier.calls == 1


def test_failures_are_never_memoised() -> None:
    verifier = Verifier()
    memo = VerifiedTokens(verifier, clock=lambda: NOW)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            memo.verify("bad")
    assert verifier.calls == 2 and len(memo) == 0


def test_memoised_token_expires_on_time() -> None:
    now = [NOW]
    memo = VerifiedTokens(Verifier(), clock=lambda: now[0])
    memo.verify("good-1")
    now[0] = NOW + 60
    with pytest.raises(InvalidToken):
        memo.verify("good-1")
    assert len(memo) == 0


def test_memo_is_bounded() -> None:
    verifier = Verifier()
    memo = VerifiedTokens(verifier, size=3, clock=lambda: NOW)
    for i in range(5):
        memo.verify(f"good-{i}")
    assert len(memo) == 3
    memo.verify("good-0")  # evicted: verified again
    assert verifier.calls == 6
