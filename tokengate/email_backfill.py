"""The Python half of ``db/003_accounts.sql``: store every user's email in its normal form.

PostgreSQL has no Unicode case folding, so the normal form (:func:`servicekit.emails.
normalise_email`) is computed here and stored in ``users.email_normal``. If two existing rows
fold to one address (``sam@x`` spelled with a long s, U+017F, and ``sam@x``), nothing is
guessed: the migration stops, lists the rows, and the operator decides which account stays
before running it again.
"""

from __future__ import annotations

from collections import defaultdict

import asyncpg
from servicekit.emails import normalise_email
from servicekit.terminal import printable

MIGRATION = "003_accounts.sql"


class EmailCollision(Exception):
    """Existing users share one address under the new normal form; the message lists them."""


async def backfill(conn: asyncpg.Connection) -> None:
    """Fill ``email_normal``, then make it NOT NULL and unique. Runs inside the migration's
    transaction, so a collision leaves the database exactly as it was."""
    rows = await conn.fetch("SELECT id, email, email_normal FROM users ORDER BY created_at, id")
    groups: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        groups[normalise_email(row["email"])].append(row)
    clashes = {form: members for form, members in groups.items() if len(members) > 1}
    if clashes:
        # the addresses are what clients registered: escaped for the operator's terminal
        lines = [
            f"  '{printable(form)}': "
            + ", ".join(f"{r['id']} ('{printable(r['email'])}')" for r in members)
            for form, members in sorted(clashes.items())
        ]
        raise EmailCollision(
            f"{len(clashes)} email address(es) are shared by several users once normalised;"
            " keep one user per address (disable or re-address the others), then migrate"
            " again:\n" + "\n".join(lines)
        )
    changes = [(row["id"], form) for form, (row,) in groups.items() if row["email_normal"] != form]
    if changes:
        await conn.executemany("UPDATE users SET email_normal = $2 WHERE id = $1", changes)
    await conn.execute("ALTER TABLE users ALTER COLUMN email_normal SET NOT NULL")
    await conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS users_email_normal_idx ON users (email_normal)"
    )
    # One definition of "the same address": the old lower() index would disagree with it.
    await conn.execute("DROP INDEX IF EXISTS users_email_lower_idx")
