"""The one normal form of an email address, shared by every service.

``normalise_email(s) = NFKC(casefold(NFKC(s))).strip()``: NFKC first folds compatibility
forms (fullwidth letters, ligatures) into plain letters, ``casefold`` is full Unicode case
folding (long s U+017F -> ``s``, ``ß`` -> ``ss``: ``lower()`` misses both), and the second NFKC
recomposes what folding produced; this is the Unicode Standard's compatibility caseless match
(§3.13) in composed form. A test checks it is idempotent over every code point.

The gateway keys its per-account login limit on it and the backend looks up and stores users by
it, so two spellings of one address are one account *and* one bucket of guesses. Validation runs
on the normal form, never on the raw input.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_EMAIL_LENGTH", "looks_like_email", "normalise_email"]

MAX_EMAIL_LENGTH = 254  # RFC 5321 §4.5.3.1.3 path limit


def normalise_email(raw: str) -> str:
    """The normal form of ``raw``; ``normalise_email(normalise_email(s)) == normalise_email(s)``."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    return folded.strip()


def looks_like_email(email: str) -> bool:
    """A deliberately loose shape check of a *normalised* address: one ``@`` with something on
    both sides, no whitespace, no control characters, at most 254 characters."""
    if not 3 <= len(email) <= MAX_EMAIL_LENGTH:
        return False
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in email):
        return False
    local, sep, domain = email.rpartition("@")
    return bool(sep and local and domain and "@" not in domain)
