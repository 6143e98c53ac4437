"""servicekit.terminal.printable: nothing a client stored can act on the operator's terminal."""

from __future__ import annotations

import unicodedata

import pytest
from servicekit.terminal import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("curl/8.5 café ünïcode 日本", "curl/8.5 café ünïcode 日本"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),  # ANSI clear, retitle, BEL
        ("a\x9b31mb", "a\\x9b31mb"),  # C1 CSI: an ANSI sequence in one character
        ("a\x85b\x00c\x7f", "a\\x85b\\x00c\\x7f"),  # NEL, NUL, DEL
        ("line\r\nforged line", "line\\x0d\\x0aforged line"),
        ("exe.\u202egnp", "exe.\\u202egnp"),  # right-to-left override: shows as "exe.png"
        ("a\u2066b\u2069\u200bc\ufeff", "a\\u2066b\\u2069\\u200bc\\ufeff"),  # isolates, ZW
        ("a\u2028b\u00a0c", "a\\u2028b\\xa0c"),  # line separator, no-break space
        ("\udcff\U000e0041\U0010fffd", "\\udcff\\U000e0041\\U0010fffd"),  # lone surrogate, tag
        ("back\\x1b", "back\\\\x1b"),  # a client cannot spell an escape that looks like ours
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_no_character_a_terminal_acts_on_survives() -> None:
    every = "".join(chr(c) for c in range(0x110000))
    out = printable(every)
    assert out.isprintable()
    # no control, format, separator (but the space) or unassigned character is left
    assert {unicodedata.category(c) for c in set(out)} & {"Cc", "Cf", "Cs", "Co", "Cn"} == set()
