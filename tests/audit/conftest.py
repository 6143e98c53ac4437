"""A freshly migrated database per test: ``audit verify`` walks every chain in it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tokengate.migrate import migrate


@pytest.fixture
def audit_db(new_database: Callable[[], str]) -> str:
    dsn = new_database()
    asyncio.run(migrate(dsn))
    return dsn
