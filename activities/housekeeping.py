"""Housekeeping's side effects: delete what has expired, a bounded batch per transaction, until
nothing expired is left (or this run's time is up: the next run carries on).

Off the request path on purpose: a merchant's request writes only what it is about, never a
share of everyone's cleanup. Every batch is its own short transaction, so a run never holds
many row locks, and a retry after a crash finds the deleted rows gone and deletes the rest:
each activity is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.db.housekeeping import delete_expired_idempotency_records, delete_expired_nonces
from core.db.vault import shred_stale_card_numbers

log = logging.getLogger("durapay.housekeeping")

# Rows per transaction: a few milliseconds of locks and WAL each, large enough that a day's
# expired nonces of a busy key take minutes, not hours, of batches.
BATCH_SIZE = 1000
# A run stops starting new batches after this long; the schedule's next run carries on, so a
# huge backlog never keeps one activity (and its heartbeats) going for hours.
WORK_SECONDS_PER_RUN = 60.0


@dataclass
class Pruned:
    """What one activity deleted: rows, in how many batches (transactions)."""

    deleted: int = 0
    batches: int = 0


class HousekeepingActivities:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        idempotency_retention: timedelta,
        batch_size: int = BATCH_SIZE,
        work_seconds: float = WORK_SECONDS_PER_RUN,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._idempotency_retention = idempotency_retention
        self._batch_size = batch_size
        self._work_seconds = work_seconds

    @activity.defn
    async def delete_expired_nonces(self) -> Pruned:
        async def batch() -> int:
            async with self._engine.begin() as connection:
                return await delete_expired_nonces(connection, limit=self._batch_size)

        return await self._until_done("expired nonces", batch)

    @activity.defn
    async def delete_expired_idempotency_records(self) -> Pruned:
        async def batch() -> int:
            async with self._engine.begin() as connection:
                return await delete_expired_idempotency_records(
                    connection,
                    datetime.now(UTC),
                    self._idempotency_retention,
                    limit=self._batch_size,
                )

        return await self._until_done("expired idempotency records", batch)

    @activity.defn
    async def shred_stale_card_numbers(self) -> Pruned:
        async def batch() -> int:
            async with self._sessions() as session:
                shredded = await shred_stale_card_numbers(
                    session, datetime.now(UTC), limit=self._batch_size
                )
                await session.commit()
            return shredded

        return await self._until_done("stale card numbers", batch)

    async def _until_done(self, what: str, batch: Callable[[], Awaitable[int]]) -> Pruned:
        pruned = Pruned()
        deadline = time.monotonic() + self._work_seconds
        while True:
            deleted = await batch()
            pruned.deleted += deleted
            pruned.batches += 1
            activity.heartbeat(pruned.deleted)
            if deleted < self._batch_size or time.monotonic() >= deadline:
                break
        if pruned.deleted:
            log.info("deleted %d %s in %d batches", pruned.deleted, what, pruned.batches)
        return pruned
