"""The one email normal form (issue 9): spellings of one address meet, and it is idempotent."""

from __future__ import annotations

import sys

import pytest
from servicekit.emails import looks_like_email, normalise_email

LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: casefolds to "s", lower() keeps it


@pytest.mark.parametrize(
    "spelling",
    [
        "sam@example.com",
        "SAM@Example.COM",
        f"{LONG_S}am@example.com",
        "\uff53\uff41\uff4d@example.com",  # fullwidth "sam"
        "\uff33\uff21\uff2d@\uff25xample.com",  # fullwidth capitals
        "  sam@example.com\t",
        "\u3000sam@example.com\u3000",  # ideographic spaces: NFKC makes them plain spaces
    ],
)
def test_spellings_share_one_normal_form(spelling: str) -> None:
    assert normalise_email(spelling) == "sam@example.com"


def test_casefold_is_not_lower() -> None:
    # the gateway used to key on lower(): these are the addresses that would slip through
    assert f"{LONG_S}am@x.test".lower() != "sam@x.test"
    assert normalise_email(f"{LONG_S}am@x.test") == "sam@x.test"
    assert normalise_email("Stra\u00dfe@x.test") == "strasse@x.test"


def test_idempotent_on_every_code_point() -> None:
    bad = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        once = normalise_email(f"a{chr(cp)}b")
        if normalise_email(once) != once:
            bad.append(hex(cp))
    assert bad == []


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("a@b", True),
        (" a@b ", True),  # valid once normalised
        ("a b@c", False),
        ("a@b\u0000", False),
        ("ab", False),
        ("@b", False),
        ("a@", False),
        ("a@" + "b" * 253, False),
    ],
)
def test_validation_runs_on_the_normal_form(raw: str, ok: bool) -> None:
    assert looks_like_email(normalise_email(raw)) is ok


def test_no_query_matches_an_email_but_by_its_normal_form() -> None:
    """Issue 23: ``sessions --email`` matched with SQL ``lower()`` while ``users`` used the normal
    form, so ``' DEMO@example.test '`` and fullwidth spellings were "no such user" there. Every
    lookup goes through ``email_normal`` (normalise_email on the Python side)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    raw = re.compile(r"lower\(\s*email|\bemail\s*(=|ILIKE|LIKE)\s*(lower\()?\$\d", re.I)
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("gateway", "backend", "tokengate", "libs")
        for path in sorted((root / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if raw.search(line)
    ]
    assert offenders == []
