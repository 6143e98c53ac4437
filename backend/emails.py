"""Email normalisation: the one place an address is trimmed and case-folded."""

from __future__ import annotations

MAX_EMAIL_LENGTH = 254  # RFC 5321 §4.5.3.1.3 path limit


def normalise_email(raw: str) -> str:
    """Trim and case-fold. Lookups and inserts both go through here, so ``A@x`` and ``a@x``
    are one account (the database's unique index on ``lower(email)`` backs this up)."""
    return raw.strip().casefold()


def looks_like_email(email: str) -> bool:
    """A deliberately loose shape check: one ``@`` with something on both sides."""
    if not 3 <= len(email) <= MAX_EMAIL_LENGTH or any(c.isspace() for c in email):
        return False
    local, sep, domain = email.rpartition("@")
    return bool(sep and local and domain and "@" not in domain)
