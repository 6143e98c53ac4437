"""Cost of one internal token: internal_auth mint/verify next to raw Ed25519 sign/verify.

Run: ``.venv/bin/python bench/internal_auth_bench.py [--rounds 7] [--number 500]``

Each operation runs ``number`` times per round in a ``time.perf_counter`` loop; rounds interleave
the four operations so a noisy neighbour hits them alike. The table shows the best round (the
usual estimate of the true cost, as ``timeit`` recommends) and the median. The raw baseline
signs and verifies a message as long as a real token's signing input, with the same key.
Goal (issue 2): mint + verify <= 1.5 x (raw sign + raw verify). Exit status 1 if missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from internal_auth import KeySet, Minter, TokenScope, Verifier, generate_private_key

GOAL = 1.5


def per_op_us(func: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        func()
    return (time.perf_counter() - start) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=500)
    args = parser.parse_args(argv)

    key = generate_private_key()
    minter = Minter(key, issuer="tokengate-gateway", audience="tokengate-backend")
    # Single use off: this loop verifies one token again and again (the cache has its own bench).
    verifier = Verifier(
        KeySet([key.public_key]),
        issuer="tokengate-gateway",
        audience="tokengate-backend",
        replay_cache=None,
    )
    sub = "7c6f7e39-2b0b-4a43-9a39-9d7b5f1f7e11"
    htu = "/v1/notes/2f1d8c1e-8a51-4a0e-9d0a-6f3b2c1d0e9f"
    sid = "0b8e0f3c-51d4-4b0c-a3a3-5f0e8d2f1c7a"

    def mint() -> str:
        return minter.mint(
            sub=sub, scope=TokenScope.USER_REQUEST, htm="GET", htu=htu, roles=["user"], sid=sid
        )

    token = mint()
    signing_input = token.rpartition(".")[0].encode("ascii")

    raw_private = key._key  # the same cryptography Ed25519 key internal_auth signs with
    raw_public = key.public_key._key
    signature = raw_private.sign(signing_input)

    def verify() -> object:
        return verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu=htu)

    operations: dict[str, Callable[[], object]] = {
        "raw Ed25519 sign": lambda: raw_private.sign(signing_input),
        "raw Ed25519 verify": lambda: raw_public.verify(signature, signing_input),
        "internal_auth mint": mint,
        "internal_auth verify": verify,
    }
    for func in operations.values():  # warm up caches and lazy imports
        per_op_us(func, max(1, args.number // 10))
    samples: dict[str, list[float]] = {name: [] for name in operations}
    for _ in range(args.rounds):
        for name, func in operations.items():
            samples[name].append(per_op_us(func, args.number))

    best = {name: min(values) for name, values in samples.items()}
    median = {name: statistics.median(values) for name, values in samples.items()}
    print(f"token: {len(token)} bytes; {args.rounds} rounds x {args.number} ops")
    print(f"{'operation':<24}{'best µs/op':>12}{'median µs/op':>14}")
    for name in operations:
        print(f"{name:<24}{best[name]:>12.1f}{median[name]:>14.1f}")

    def ratio(table: dict[str, float]) -> float:
        ours = table["internal_auth mint"] + table["internal_auth verify"]
        raw = table["raw Ed25519 sign"] + table["raw Ed25519 verify"]
        return ours / raw

    print(f"{'ratio (mint+verify)/(sign+verify)':<36}{ratio(best):>6.2f}{ratio(median):>8.2f}")
    met = ratio(best) <= GOAL
    print(f"goal <= {GOAL}x: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
