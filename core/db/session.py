"""Async engine and sessions: one engine per process, sessions per unit of work."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel.ext.asyncio.session import AsyncSession

# A pooled connection unused for longer than this is pinged before it is handed out; one used
# more recently is not. A ping costs three statements (BEGIN, `;`, ROLLBACK) and their round
# trips, on every checkout when every connection is pinged, and a busy process checks its
# connections out again within milliseconds. A connection that broke while in recent use
# (Postgres restarted a moment ago) fails its statement instead: SQLAlchemy then invalidates
# the whole pool (every connection older than the failure), the request answers 503 with
# Retry-After (api/errors.py) or the activity is retried, and the next checkout connects
# afresh. So a restart fails at most the requests in flight at that moment.
PING_IDLE_SECONDS = 5.0
_CHECKED_IN_AT = "durapay_checked_in_at"


def create_engine(
    database_url: str, *, pool_size: int = 10, ping_idle_seconds: float = PING_IDLE_SECONDS
) -> AsyncEngine:
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A failed statement's error (and so any log line or traceback quoting it) names no
        # bound value: those are card tokens, ciphertexts, merchants' own text.
        hide_parameters=True,
    )
    _ping_connections_idle_for(engine, ping_idle_seconds)
    return engine


def _ping_connections_idle_for(engine: AsyncEngine, seconds: float) -> None:
    """SQLAlchemy's "pessimistic" disconnect handling, for idle connections only: a ping that
    fails raises `DisconnectionError`, on which the pool drops that connection and checks out
    another (a fresh one after a restart)."""
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def note_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        if checked_in_at is None or time.monotonic() - checked_in_at < seconds:
            return  # connected just now, or used a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise exc.DisconnectionError("an idle pooled connection failed its ping") from error


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
