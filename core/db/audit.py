"""Reading and checkpointing the audit trail's hash chains (core/audit_chain.py holds the rules).

`verify_chains` walks every chain (or one merchant's) from its first event, in batches, and
names the first broken or missing link. `record_checkpoints` copies each chain head that moved
into the append-only `audit_checkpoint` table; the Temporal Schedule `durapay-audit-checkpoint`
calls it, so an event deleted from a chain's end after a checkpoint is noticed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.audit_chain import BrokenLink, ChainHead, ChainWalk, chain_of

BATCH = 1000

_EVENT_COLUMNS = ("seq, id, chain, chain_seq, prev_hash, hash, merchant_id, payment_intent_id, "
                  "transaction_id, intent_seq, type, data, created_at")


@dataclass
class ChainReport:
    chain: str
    events: int
    broken: BrokenLink | None


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def first_broken(self) -> BrokenLink | None:
        return next((c.broken for c in self.chains if c.broken), None)

    @property
    def events(self) -> int:
        return sum(c.events for c in self.chains)


async def verify_chains(engine: AsyncEngine, merchant_id: str | None = None) -> VerifyReport:
    """Walk the chains (one merchant's, or all) under one snapshot: REPEATABLE READ, read only,
    so events appended meanwhile neither break nor extend what is checked."""
    report = VerifyReport()
    async with engine.connect() as connection:
        await connection.execute(text(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        for chain in await _chains(connection, merchant_id):
            heads = (await connection.execute(text(
                "SELECT chain_seq, hash FROM audit_chain_head WHERE chain = :chain"),
                {"chain": chain})).all()
            checkpoints = (await connection.execute(text(
                "SELECT chain_seq, hash FROM audit_checkpoint WHERE chain = :chain "
                "ORDER BY chain_seq"), {"chain": chain})).all()
            walk = ChainWalk(chain, ChainHead(*heads[0]) if heads else None,
                             [ChainHead(*c) for c in checkpoints])
            broken = None
            async for row in _chain_rows(connection, chain):
                broken = walk.feed(row)
                if broken:
                    break
            else:
                broken = walk.finish()
            report.chains.append(ChainReport(chain, walk.walked, broken))
    return report


async def _chains(connection: AsyncConnection, merchant_id: str | None) -> list[str]:
    """Every chain that the events, the heads or the checkpoints know of: a chain whose events
    were all deleted is still found by its head and checkpoints."""
    if merchant_id is not None:
        return [chain_of(merchant_id)]
    rows = await connection.execute(text(
        "SELECT chain FROM audit_chain_head UNION SELECT DISTINCT chain FROM audit_checkpoint "
        "UNION SELECT DISTINCT chain FROM event ORDER BY chain"))
    return [r[0] for r in rows]


async def _chain_rows(connection: AsyncConnection,
                      chain: str) -> AsyncIterator[Mapping[str, Any]]:
    """One chain's events in position order, a batch at a time (keyset on chain_seq)."""
    after = 0
    while True:
        batch = (await connection.execute(text(
            f"SELECT {_EVENT_COLUMNS} FROM event WHERE chain = :chain AND chain_seq > :after "
            "ORDER BY chain_seq LIMIT :batch"),
            {"chain": chain, "after": after, "batch": BATCH})).mappings().all()
        for row in batch:
            yield row
        if len(batch) < BATCH:
            return
        after = batch[-1]["chain_seq"]


async def record_checkpoints(connection: AsyncConnection) -> int:
    """Checkpoint every chain head past its last checkpoint; returns how many were recorded."""
    result = await connection.execute(text("""
        INSERT INTO audit_checkpoint (chain, chain_seq, hash)
        SELECT head.chain, head.chain_seq, head.hash FROM audit_chain_head AS head
        WHERE head.chain_seq > coalesce((SELECT max(c.chain_seq) FROM audit_checkpoint AS c
                                         WHERE c.chain = head.chain), 0)
        """))
    return result.rowcount
