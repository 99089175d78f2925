"""The audit trail's checkpoint: copy each hash chain's head into `audit_checkpoint`."""

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
        """Idempotent: a retry finds the heads checkpointed and records nothing more."""
        async with self._engine.begin() as connection:
            recorded = await record_checkpoints(connection)
        if recorded:
            log.info("checkpointed %d audit chain heads", recorded)
        return recorded
