"""Reading and checkpointing the audit trail's hash chains (core/audit_chain.py holds the rules).

`verify_chains` walks every chain (or one merchant's) from its first event, with the heads the
checkpoints recorded for it, and then every scope's checkpoint chain, and names the first
broken or missing link of each scope. `record_checkpoints` records, for each scope whose
chains moved since the last run, a checkpoint of the moved heads; the Temporal Schedule
`durapay-audit-checkpoint` calls it, so a chain's end or a whole chain deleted after a
checkpoint is noticed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col

from core.audit_chain import (
    GENESIS_HASH,
    BrokenLink,
    ChainHead,
    ChainWalk,
    CheckpointWalk,
    Mark,
    checkpoint_hash,
    merkle_root,
    scope_of,
)
from core.db.tables import AuditCheckpoint, AuditCheckpointHead

# Events and the heads checkpoints recorded, in one stream sorted by chain and position, a
# head right after the event at its position (kind 0 before 1). The scope is the merchant's,
# computed as core/audit_chain.py's scope_of does.
_CHAINS = """
SELECT * FROM (
    SELECT 0 AS kind, chain, chain_seq,
           CASE WHEN merchant_id IS NULL THEN 'operator' ELSE 'merchant:' || merchant_id END
               AS scope,
           seq, id, prev_hash, hash, merchant_id, payment_intent_id, transaction_id,
           intent_seq, type, data, created_at, NULL::bigint AS checkpoint
    FROM event {event_filter}
    UNION ALL
    SELECT 1, head.chain, head.chain_seq, checkpoint.scope, NULL, NULL, NULL, head.hash, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL, checkpoint.position
    FROM audit_checkpoint_head AS head
    JOIN audit_checkpoint AS checkpoint ON checkpoint.id = head.checkpoint_id {scope_filter}
) AS rows ORDER BY chain, chain_seq, kind, checkpoint
"""

# Every scope's checkpoints in position order, each followed by the heads it records.
_CHECKPOINTS = """
SELECT checkpoint.id, checkpoint.scope, checkpoint.position, checkpoint.chains,
       checkpoint.root, checkpoint.prev_hash, checkpoint.hash, checkpoint.recorded_at,
       head.chain, head.chain_seq, head.hash AS head_hash
FROM audit_checkpoint AS checkpoint
LEFT JOIN audit_checkpoint_head AS head ON head.checkpoint_id = checkpoint.id
{scope_filter}
ORDER BY checkpoint.scope, checkpoint.position, checkpoint.id, head.chain
"""


@dataclass
class ScopeReport:
    """One merchant's trail (or the operator's): what was walked, and the first break."""

    scope: str
    chains: int = 0
    events: int = 0
    checkpoints: int = 0
    broken_chains: int = 0
    broken: BrokenLink | None = None

    def add_break(self, broken: BrokenLink | None) -> None:
        if broken is not None:
            self.broken_chains += 1
            self.broken = self.broken or broken


@dataclass
class VerifyReport:
    scopes: dict[str, ScopeReport] = field(default_factory=dict)

    def scope(self, name: str) -> ScopeReport:
        return self.scopes.setdefault(name, ScopeReport(name))

    @property
    def first_broken(self) -> BrokenLink | None:
        return next((s.broken for s in self.scopes.values() if s.broken), None)

    @property
    def chains(self) -> int:
        return sum(s.chains for s in self.scopes.values())

    @property
    def events(self) -> int:
        return sum(s.events for s in self.scopes.values())

    @property
    def checkpoints(self) -> int:
        return sum(s.checkpoints for s in self.scopes.values())


async def verify_chains(engine: AsyncEngine, merchant_id: str | None = None) -> VerifyReport:
    """Walk the chains and checkpoints (one merchant's, or all) under one snapshot:
    REPEATABLE READ, read only, so what is appended meanwhile neither breaks nor extends what
    is checked. Each stream is read through a server-side cursor: memory stays flat."""
    report = VerifyReport()
    if merchant_id is not None:
        report.scope(scope_of(merchant_id))
    params = {"merchant_id": merchant_id, "scope": scope_of(merchant_id)}
    async with engine.connect() as connection:
        await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        await _walk_chains(connection, report, params, merchant_id is not None)
        await _walk_checkpoints(connection, report, params, merchant_id is not None)
    return report


async def _stream(
    connection: AsyncConnection, sql: str, params: Mapping[str, Any]
) -> AsyncIterator[Mapping[str, Any]]:
    result = await connection.stream(text(sql), params)
    async for row in result.mappings():
        yield cast(Mapping[str, Any], row)  # a text() statement's rows: keys are column names


async def _walk_chains(
    connection: AsyncConnection, report: VerifyReport, params: Mapping[str, Any], one_merchant: bool
) -> None:
    sql = _CHAINS.format(
        event_filter="WHERE merchant_id = :merchant_id" if one_merchant else "",
        scope_filter="WHERE checkpoint.scope = :scope" if one_merchant else "",
    )
    walk: ChainWalk | None = None
    scope: ScopeReport | None = None

    def finish() -> None:
        if walk is not None and scope is not None:
            scope.chains += 1
            scope.events += walk.walked
            scope.add_break(walk.finish())

    async for row in _stream(connection, sql, params):
        if walk is None or row["chain"] != walk.chain:
            finish()
            walk, scope = ChainWalk(row["chain"]), report.scope(row["scope"])
        if row["kind"] == 0:
            walk.feed(row)
        else:
            walk.check(Mark(row["checkpoint"], row["chain_seq"], row["hash"]))
    finish()


async def _walk_checkpoints(
    connection: AsyncConnection, report: VerifyReport, params: Mapping[str, Any], one_merchant: bool
) -> None:
    sql = _CHECKPOINTS.format(
        scope_filter="WHERE checkpoint.scope = :scope" if one_merchant else ""
    )
    walks: dict[str, CheckpointWalk] = {}
    current: Mapping[str, Any] | None = None
    heads: list[ChainHead] = []

    def finish() -> None:
        if current is None:
            return
        scope = report.scope(current["scope"])
        walk = walks.setdefault(current["scope"], CheckpointWalk(current["scope"]))
        if walk.broken is None:
            scope.checkpoints += 1
            scope.add_break(walk.feed(current, heads))

    async for row in _stream(connection, sql, params):
        if current is None or row["id"] != current["id"]:
            finish()
            current, heads = row, []
        if row["chain"] is not None:
            heads.append(ChainHead(row["chain"], row["chain_seq"], row["head_hash"]))
    finish()


# The chains with an event the last run's snapshot did not see: written by a transaction
# that was running or not yet started then (its id at least that snapshot's xmin, and not
# visible in it). The index on txid keeps this to the events since about the last run.
_MOVED_HEADS = """
SELECT head.chain, head.chain_seq, head.hash, head.merchant_id
FROM (SELECT DISTINCT chain FROM event {moved}) AS moved
CROSS JOIN LATERAL (
    SELECT chain, chain_seq, hash, merchant_id FROM event
    WHERE event.chain = moved.chain ORDER BY chain_seq DESC LIMIT 1
) AS head
"""
_SINCE_SNAPSHOT = """
WHERE txid >= (pg_snapshot_xmin(CAST(CAST(:covered AS TEXT) AS pg_snapshot))::text)::bigint
  AND NOT pg_visible_in_snapshot((txid::text)::xid8, CAST(CAST(:covered AS TEXT) AS pg_snapshot))
"""


@dataclass(frozen=True)
class CheckpointRun:
    scopes: int
    heads: int


async def record_checkpoints(connection: AsyncConnection) -> CheckpointRun:
    """One checkpoint for each scope with a chain that moved since the last run: the moved
    chains' heads, their Merkle root, linked to the scope's previous checkpoint.

    Call it first thing in its own transaction: it reads under REPEATABLE READ, so the
    snapshot it records (`covered_snapshot`) is exactly the one its heads were read in, and
    the next run starts from there. Running it twice records nothing the second time; two
    runs at once collide on (scope, position) and the loser's retry finds the rest.
    """
    await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    now, snapshot = (
        await connection.execute(text("SELECT now(), pg_current_snapshot()::text"))
    ).one()
    covered = (
        await connection.execute(
            text("SELECT covered_snapshot FROM audit_checkpoint ORDER BY id DESC LIMIT 1")
        )
    ).scalar()
    moved = _MOVED_HEADS.format(moved=_SINCE_SNAPSHOT if covered is not None else "")
    by_scope: dict[str, list[ChainHead]] = defaultdict(list)
    for row in await connection.execute(text(moved), {"covered": covered}):
        by_scope[scope_of(row.merchant_id)].append(ChainHead(row.chain, row.chain_seq, row.hash))
    if not by_scope:
        return CheckpointRun(0, 0)
    last = {
        row.scope: (row.position, row.hash)
        for row in await connection.execute(
            text(
                "SELECT DISTINCT ON (scope) scope, position, hash FROM audit_checkpoint "
                "WHERE scope = ANY(CAST(:scopes AS VARCHAR[])) ORDER BY scope, position DESC"
            ),
            {"scopes": sorted(by_scope)},
        )
    }
    checkpoints = [
        _checkpoint(scope, heads, last.get(scope), now, snapshot)
        for scope, heads in sorted(by_scope.items())
    ]
    ids = {
        row.scope: row.id
        for row in await connection.execute(
            insert(AuditCheckpoint).returning(col(AuditCheckpoint.id), col(AuditCheckpoint.scope)),
            checkpoints,
        )
    }
    await connection.execute(
        insert(AuditCheckpointHead),
        [
            {
                "checkpoint_id": ids[scope],
                "chain": head.chain,
                "chain_seq": head.chain_seq,
                "hash": head.hash,
            }
            for scope, heads in by_scope.items()
            for head in heads
        ],
    )
    return CheckpointRun(len(checkpoints), sum(len(heads) for heads in by_scope.values()))


def _checkpoint(
    scope: str, heads: list[ChainHead], last: tuple[int, str] | None, now: datetime, snapshot: str
) -> dict[str, Any]:
    position, previous = last or (0, GENESIS_HASH)
    row: dict[str, Any] = {
        "scope": scope,
        "position": position + 1,
        "chains": len(heads),
        "root": merkle_root(heads),
        "prev_hash": previous,
        "recorded_at": now,
        "covered_snapshot": snapshot,
    }
    row["hash"] = checkpoint_hash(previous, row)
    return row
