"""Audit chains per payment instead of per merchant (core/audit_chain.py): no row that every
event of a merchant writes, so one merchant's payments are recorded side by side.

Every event moves to the chain of its subject: a payment's events to the payment's chain in
their `intent_seq` order, an endpoint's `webhook_endpoint.disabled` to the endpoint's, a
discrepancy's event to the discrepancy's; each is re-hashed in its new chain. The writer's
head rows (`audit_chain_head`) go. The merchant chains' checkpoints go too (they name chains
that no longer exist) and are replaced by per-merchant checkpoints of the new chains' heads
(`audit_checkpoint`, `audit_checkpoint_head`, append-only like `event`), which the schedule
records from the next run on, starting with every chain. `event.txid`, the writing
transaction's id, tells that schedule which chains moved.

An event stream consumer running across this migration sees the re-chaining as updates of the
event table (it logs them as rewrites): restart it with `--from-seq 1` for the new hashes.

Revision ID: 2026_12_04_per_payment_chains
Revises: 2026_12_04_event_stream_slot
Create Date: 2026-12-04
"""

from collections.abc import Callable, Mapping
from typing import Any, cast

import sqlalchemy as sa
from alembic import op

from core.audit_chain import GENESIS_HASH, link_hash
from core.db.migrate import run_sql_script

revision = "2026_12_04_per_payment_chains"
down_revision = "2026_12_04_event_stream_slot"
branch_labels = None
depends_on = None

UPGRADE_BEFORE = """
DROP TABLE audit_checkpoint;
DROP TABLE audit_chain_head;
ALTER TABLE event ADD COLUMN txid BIGINT DEFAULT (pg_current_xact_id()::text)::bigint NOT NULL;
CREATE INDEX ix_event_txid ON event (txid);
"""

UPGRADE_AFTER = """
CREATE TABLE audit_checkpoint (
    id BIGSERIAL NOT NULL,
    scope VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    chains INTEGER NOT NULL,
    root VARCHAR NOT NULL,
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL,
    covered_snapshot VARCHAR NOT NULL,
    recorded_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_audit_checkpoint PRIMARY KEY (id),
    CONSTRAINT uq_audit_checkpoint_scope_position UNIQUE (scope, position)
);
CREATE TABLE audit_checkpoint_head (
    checkpoint_id BIGINT NOT NULL,
    chain VARCHAR NOT NULL,
    chain_seq BIGINT NOT NULL,
    hash VARCHAR NOT NULL,
    CONSTRAINT pk_audit_checkpoint_head PRIMARY KEY (checkpoint_id, chain),
    CONSTRAINT fk_audit_checkpoint_head_checkpoint_id_audit_checkpoint
        FOREIGN KEY (checkpoint_id) REFERENCES audit_checkpoint (id)
);
CREATE INDEX ix_audit_checkpoint_head_chain_chain_seq ON audit_checkpoint_head (chain, chain_seq);
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER audit_checkpoint_head_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint_head
    FOR EACH ROW EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER audit_checkpoint_head_no_truncate BEFORE TRUNCATE ON audit_checkpoint_head
    FOR EACH STATEMENT EXECUTE FUNCTION event_is_append_only();
"""

DOWNGRADE_BEFORE = """
DROP TABLE audit_checkpoint_head;
DROP TABLE audit_checkpoint;
DROP INDEX ix_event_txid;
ALTER TABLE event DROP COLUMN txid;
"""

DOWNGRADE_AFTER = """
CREATE TABLE audit_chain_head (
    chain VARCHAR NOT NULL,
    chain_seq BIGINT NOT NULL,
    hash VARCHAR NOT NULL,
    CONSTRAINT pk_audit_chain_head PRIMARY KEY (chain)
);
INSERT INTO audit_chain_head (chain, chain_seq, hash)
    SELECT DISTINCT ON (chain) chain, chain_seq, hash FROM event ORDER BY chain, chain_seq DESC;
CREATE TABLE audit_checkpoint (
    id BIGSERIAL NOT NULL,
    chain VARCHAR NOT NULL,
    chain_seq BIGINT NOT NULL,
    hash VARCHAR NOT NULL,
    recorded_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_audit_checkpoint PRIMARY KEY (id)
);
CREATE INDEX ix_audit_checkpoint_chain_chain_seq ON audit_checkpoint (chain, chain_seq DESC);
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION event_is_append_only();
"""

# The event types written outside a payment's story, and the data field naming their subject.
SUBJECT_OF_TYPE = {
    "webhook_endpoint.disabled": "endpointId",
    "reconciliation.discrepancy": "discrepancyId",
}


def upgrade() -> None:
    run_sql_script(UPGRADE_BEFORE)
    _rechain("intent_seq NULLS LAST, seq", _subject_chain)
    run_sql_script(UPGRADE_AFTER)


def downgrade() -> None:
    run_sql_script(DOWNGRADE_BEFORE)
    _rechain("seq", _merchant_chain)
    run_sql_script(DOWNGRADE_AFTER)


def _subject_chain(row: Mapping[str, Any]) -> str:
    if row["intent_seq"] is not None:
        return str(row["payment_intent_id"])
    field = SUBJECT_OF_TYPE.get(row["type"])
    if field is None or not row["data"].get(field):
        raise RuntimeError(f"event {row['id']} ({row['type']}) names no subject to chain it to")
    return str(row["data"][field])


def _merchant_chain(row: Mapping[str, Any]) -> str:
    """The chain each event had before this revision: its merchant's, or the operator's."""
    return f"merchant:{row['merchant_id']}" if row["merchant_id"] else "operator"


def _rechain(order: str, chain_of: Callable[[Mapping[str, Any]], str]) -> None:
    """Re-chain every event, each chain in `order` (the append-only trigger is set aside for
    this one rewrite, inside the migration's transaction). A payment's positions are its
    `intent_seq`, gap-free by construction."""
    bind = op.get_bind()
    rows = (
        bind.execute(
            sa.text(
                "SELECT seq, id, merchant_id, payment_intent_id, transaction_id, intent_seq, type, "
                f"data, created_at FROM event ORDER BY {order}"
            )
        )
        .mappings()
        .all()
    )
    if not rows:
        return
    heads: dict[str, tuple[int, str]] = {}
    updates: list[dict[str, Any]] = []
    for row in rows:
        chain = chain_of(cast(Mapping[str, Any], row))  # text(): keys are column names
        position, previous = heads.get(chain, (0, GENESIS_HASH))
        chained = {**row, "chain": chain, "chain_seq": position + 1}
        digest = link_hash(previous, chained)
        heads[chain] = (position + 1, digest)
        updates.append(
            {
                "seq": row["seq"],
                "chain": chain,
                "chain_seq": position + 1,
                "prev_hash": previous,
                "hash": digest,
            }
        )
    bind.execute(sa.text("ALTER TABLE event DISABLE TRIGGER event_append_only"))
    bind.execute(
        sa.text(
            "UPDATE event SET chain = :chain, chain_seq = :chain_seq, prev_hash = :prev_hash, "
            "hash = :hash WHERE seq = :seq"
        ),
        updates,
    )
    bind.execute(sa.text("ALTER TABLE event ENABLE TRIGGER event_append_only"))
