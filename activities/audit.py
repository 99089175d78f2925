"""The audit trail's checkpoint: record the heads of the hash chains that moved, one checkpoint
per merchant (core/db/audit.py)."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from core.db.audit import record_checkpoints

log = logging.getLogger("durapay.audit")


class AuditActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn
    async def record_chain_checkpoints(self) -> int:
        """Idempotent: a retry finds the heads checkpointed and records nothing more.
        Returns how many chain heads were recorded."""
        async with self._engine.begin() as connection:
            run = await record_checkpoints(connection)
        if run.heads:
            log.info("checkpointed %d audit chain heads of %d merchants", run.heads, run.scopes)
        return run.heads
