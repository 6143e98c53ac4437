"""Stored client data, made safe to print on an operator's terminal (issue 22, item 9).

A User-Agent, an email or any other string a client chose reaches ``tokengate sessions list``
and the other commands from the database. Printed raw, its control characters act on the
operator's terminal: ESC (C0) and CSI (C1, U+009B) start ANSI sequences that move the cursor,
rewrite earlier lines, retitle the window or, on some terminals, answer back into the input;
bidi overrides (U+202E) and zero-width characters make one string read as another. Every
command prints such data through :func:`printable`, and only through it.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on spelled as a Python escape.

    Escaped: everything :meth:`str.isprintable` refuses (C0 and C1 controls, DEL, Unicode
    format characters such as the bidi overrides and zero-width joiners, line and paragraph
    separators, every space but U+0020, surrogates, private use, unassigned), and the
    backslash itself, so a client cannot spell a fake escape. One pass: linear in the input.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        "\\\\" if char == "\\" else char if char.isprintable() else _escape(char) for char in text
    )
