"""The pool's pings (core/db/session.py), on the API tests' real PostgreSQL: a connection used a
moment ago is handed out without a ping; an idle one is pinged, and one whose server side is
gone is replaced before anyone uses it; a connection that broke while in recent use fails one
statement (a 503 in the API), and the pool connects afresh for the next."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import is_outage
from core.db.session import create_engine
from core.settings import to_asyncpg_url

pytestmark = pytest.mark.api

IDLE_SECONDS = 0.5


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        to_asyncpg_url(database_url), pool_size=1, ping_idle_seconds=IDLE_SECONDS
    )
    yield engine
    await engine.dispose()


@pytest.fixture
def pings(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the dialect's real pings."""
    counted: list[int] = []
    dialect = engine.sync_engine.dialect
    ping: Callable[[Any], bool] = dialect.do_ping

    def counting_ping(dbapi_connection: Any) -> bool:
        counted.append(1)
        return ping(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counting_ping)
    return counted


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(database_url: str, pid: int) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_connection_used_a_moment_ago_is_not_pinged(
    engine: AsyncEngine, pings: list[int]
) -> None:
    pids = {await backend_pid(engine) for _ in range(20)}
    assert len(pids) == 1  # the same pooled connection every time
    assert pings == []


async def test_an_idle_connection_whose_server_side_is_gone_is_replaced_unseen(
    engine: AsyncEngine, pings: list[int], database_url: str
) -> None:
    first = await backend_pid(engine)
    await terminate(database_url, first)
    await asyncio.sleep(IDLE_SECONDS * 2)
    second = await backend_pid(engine)  # no error: the ping found it dead, the pool reconnected
    assert second != first
    assert len(pings) == 1


async def test_a_connection_broken_in_recent_use_fails_once_as_an_outage(
    engine: AsyncEngine, pings: list[int], database_url: str
) -> None:
    first = await backend_pid(engine)
    await terminate(database_url, first)
    with pytest.raises(DBAPIError) as failed:
        await backend_pid(engine)
    assert is_outage(failed.value)  # the API answers it 503 with Retry-After
    assert await backend_pid(engine) != first
    assert pings == []
