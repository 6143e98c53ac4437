"""Notes, the business resource: every query is scoped to the owner, so another user's note is
indistinguishable from a missing one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

MAX_TITLE = 200
MAX_BODY = 10_000


@dataclass(frozen=True)
class Note:
    id: uuid.UUID
    owner_id: uuid.UUID
    title: str
    body: str
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "title": self.title,
            "body": self.body,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _note(row: asyncpg.Record) -> Note:
    return Note(**dict(row))


class NoteStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def list(self, owner: uuid.UUID, *, limit: int, offset: int) -> list[Note]:
        rows = await self._pool.fetch(
            "SELECT id, owner_id, title, body, created_at, updated_at FROM notes"
            " WHERE owner_id = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
            owner,
            limit,
            offset,
        )
        return [_note(r) for r in rows]

    async def create(self, owner: uuid.UUID, title: str, body: str) -> Note:
        row = await self._pool.fetchrow(
            "INSERT INTO notes (id, owner_id, title, body) VALUES ($1, $2, $3, $4)"
            " RETURNING id, owner_id, title, body, created_at, updated_at",
            uuid.uuid4(),
            owner,
            title,
            body,
        )
        return _note(row)

    async def get(self, owner: uuid.UUID, note_id: uuid.UUID) -> Note | None:
        row = await self._pool.fetchrow(
            "SELECT id, owner_id, title, body, created_at, updated_at FROM notes"
            " WHERE id = $1 AND owner_id = $2",
            note_id,
            owner,
        )
        return _note(row) if row else None

    async def update(
        self, owner: uuid.UUID, note_id: uuid.UUID, *, title: str | None, body: str | None
    ) -> Note | None:
        row = await self._pool.fetchrow(
            "UPDATE notes SET title = coalesce($3, title), body = coalesce($4, body),"
            " updated_at = now() WHERE id = $1 AND owner_id = $2"
            " RETURNING id, owner_id, title, body, created_at, updated_at",
            note_id,
            owner,
            title,
            body,
        )
        return _note(row) if row else None

    async def delete(self, owner: uuid.UUID, note_id: uuid.UUID) -> bool:
        status = await self._pool.execute(
            "DELETE FROM notes WHERE id = $1 AND owner_id = $2", note_id, owner
        )
        return bool(status == "DELETE 1")
