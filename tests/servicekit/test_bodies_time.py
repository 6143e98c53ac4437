"""servicekit.bodies costs time linear in the body, whatever the body holds (issue 21, finding 1).

The attack: the old depth check cut strings out with a regex that restarted at every quote, so
``"`` followed by many ``\\"`` cost O(n²) on the event loop (9 s for one 64 KB note). Here a hostile
body of size n must cost at most a small constant times a plain body of the same size.

The plain body is the densest ordinary JSON a client sends (an array of small objects: one
container and three values every 26 bytes), so the ratio measures what the content adds, not how
many values there are. Times are the best of a few runs (``time.perf_counter``), which removes most
of the noise of a loaded machine; the constant is generous (the new code stays under 3x on an idle
machine, the old one is above 1,000x at this size).
"""

from __future__ import annotations

import time

from hypothesis import example, given, settings
from hypothesis import strategies as st
from servicekit.bodies import BodyError, parse_json

#: The backend's body limit: the largest JSON body either service parses.
SIZE = 64 * 1024
#: Hostile cost / plain cost may not exceed this (measured: at most 2.5 idle).
RATIO = 10.0
RUNS = 3

# Units that once cost more than their size, or could: quotes and escapes (the string regex),
# brackets (the depth scan), escapes the text check decodes.
HOSTILE_UNITS = [b'\\"', b'"', b"\\\\", b"\\", b"[", b"{", b'{"a":', b"[1,", b"[],", b'"a",']
HOSTILE_UNITS += [b"\\u0000", b"\\ud800", b"\\ud83d\\ude00", b"]", b"}", b'"\\', b"1,"]
PREFIXES = [b"", b'"', b"[", b'["', b'{"a": "', b'{"title": "t", "body": "']


def _fit(prefix: bytes, unit: bytes, suffix: bytes = b"", size: int = SIZE) -> bytes:
    count = max((size - len(prefix) - len(suffix)) // len(unit), 1)
    return prefix + unit * count + suffix


def _plain(size: int = SIZE) -> bytes:
    return _fit(b"[", b'{"id": 12, "tag": "abc"},', b"{}]", size)


def _cost(raw: bytes) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        try:
            parse_json(raw)
        except BodyError:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def test_the_plain_body_is_json_the_parser_accepts() -> None:
    assert isinstance(parse_json(_plain()), list)


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.sampled_from(PREFIXES),
    unit=st.sampled_from(HOSTILE_UNITS) | st.binary(min_size=1, max_size=6),
    suffix=st.sampled_from([b"", b'"', b"]", b'"]', b"}"]),
)
@example(prefix=b'"', unit=b'\\"', suffix=b"")  # the reproduction: 9 s on the old code
@example(prefix=b'["', unit=b"\\\\", suffix=b'"]')
@example(prefix=b"", unit=b"[", suffix=b"")
def test_a_hostile_body_costs_at_most_a_constant_times_a_plain_one(
    prefix: bytes, unit: bytes, suffix: bytes
) -> None:
    hostile = _fit(prefix, unit, suffix)
    assert len(hostile) <= SIZE
    plain = _plain(len(hostile))
    hostile_cost, plain_cost = _cost(hostile), _cost(plain)
    assert hostile_cost <= RATIO * plain_cost, (
        f"{len(hostile)} bytes of {prefix!r} + {unit!r}... cost {hostile_cost * 1e3:.2f} ms, "
        f"a plain body {plain_cost * 1e3:.2f} ms"
    )


def test_cost_grows_linearly_with_the_size_of_the_attack() -> None:
    # Quadratic code costs 16x at 4x the size; linear code 4x (8 allows for noise).
    small = _cost(_fit(b'"', b'\\"', size=SIZE // 4))
    large = _cost(_fit(b'"', b'\\"', size=SIZE))
    assert large <= 8 * small + 0.001, (small, large)
