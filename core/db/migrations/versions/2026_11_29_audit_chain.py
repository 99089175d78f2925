"""Audit trail you can prove: events are hash-chained per merchant (core/audit_chain.py), carry a
per-intent sequence, and the chains' heads are kept by the writer (`audit_chain_head`, its row
lock orders a merchant's appends) and checkpointed by a Temporal Schedule (`audit_checkpoint`,
append-only like `event`).

Events written before this revision are chained here, in their `seq` order; their `data` keeps
the shape it had (no `previous` state: it was never recorded).

Revision ID: 2026_11_29_audit_chain
Revises: 2026_11_28_card_number_retention
Create Date: 2026-11-29
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from core.audit_chain import GENESIS_HASH, link_hash
from core.db.migrate import run_sql_script

revision = "2026_11_29_audit_chain"
down_revision = "2026_11_28_card_number_retention"
branch_labels = None
depends_on = None

ADD_COLUMNS = """
ALTER TABLE event ADD COLUMN chain VARCHAR;
ALTER TABLE event ADD COLUMN chain_seq BIGINT;
ALTER TABLE event ADD COLUMN prev_hash VARCHAR;
ALTER TABLE event ADD COLUMN hash VARCHAR;
ALTER TABLE event ADD COLUMN intent_seq INTEGER;
"""

CONSTRAIN = """
ALTER TABLE event ALTER COLUMN chain SET NOT NULL;
ALTER TABLE event ALTER COLUMN chain_seq SET NOT NULL;
ALTER TABLE event ALTER COLUMN prev_hash SET NOT NULL;
ALTER TABLE event ALTER COLUMN hash SET NOT NULL;
ALTER TABLE event ADD CONSTRAINT uq_event_chain_chain_seq UNIQUE (chain, chain_seq);
ALTER TABLE event ADD CONSTRAINT uq_event_payment_intent_id_intent_seq
    UNIQUE (payment_intent_id, intent_seq);
CREATE TABLE audit_chain_head (
    chain VARCHAR NOT NULL,
    chain_seq BIGINT NOT NULL,
    hash VARCHAR NOT NULL,
    CONSTRAINT pk_audit_chain_head PRIMARY KEY (chain)
);
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

DOWNGRADE = """
DROP TABLE audit_checkpoint;
DROP TABLE audit_chain_head;
ALTER TABLE event DROP CONSTRAINT uq_event_payment_intent_id_intent_seq;
ALTER TABLE event DROP CONSTRAINT uq_event_chain_chain_seq;
ALTER TABLE event DROP COLUMN intent_seq;
ALTER TABLE event DROP COLUMN hash;
ALTER TABLE event DROP COLUMN prev_hash;
ALTER TABLE event DROP COLUMN chain_seq;
ALTER TABLE event DROP COLUMN chain;
"""


def chain_of(merchant_id: str | None) -> str:
    """This revision's chains: one per merchant, one for events about no merchant."""
    return f"merchant:{merchant_id}" if merchant_id else "operator"


def upgrade() -> None:
    run_sql_script(ADD_COLUMNS)
    _chain_existing_events()
    run_sql_script(CONSTRAIN)
    _record_heads()


def _chain_existing_events() -> None:
    """Chain the events already there, oldest first (the append-only trigger is set aside for
    this one rewrite, inside the migration's transaction)."""
    bind = op.get_bind()
    rows = (
        bind.execute(
            sa.text(
                "SELECT seq, id, merchant_id, payment_intent_id, transaction_id, type, data, "
                "created_at FROM event ORDER BY seq"
            )
        )
        .mappings()
        .all()
    )
    if not rows:
        return
    heads: dict[str, tuple[int, str]] = {}
    intent_counts: dict[str, int] = {}
    updates: list[dict[str, Any]] = []
    for row in rows:
        chain = chain_of(row["merchant_id"])
        position, previous = heads.get(chain, (0, GENESIS_HASH))
        intent_seq = None
        # Only the payment's own events are numbered (operator events are chained, unnumbered).
        if row["payment_intent_id"] and row["type"].startswith("payment."):
            intent_seq = intent_counts.get(row["payment_intent_id"], 0) + 1
            intent_counts[row["payment_intent_id"]] = intent_seq
        chained = {**row, "chain": chain, "chain_seq": position + 1, "intent_seq": intent_seq}
        digest = link_hash(previous, chained)
        heads[chain] = (position + 1, digest)
        updates.append(
            {
                "seq": row["seq"],
                "chain": chain,
                "chain_seq": position + 1,
                "prev_hash": previous,
                "hash": digest,
                "intent_seq": intent_seq,
            }
        )
    bind.execute(sa.text("ALTER TABLE event DISABLE TRIGGER event_append_only"))
    bind.execute(
        sa.text(
            "UPDATE event SET chain = :chain, chain_seq = :chain_seq, prev_hash = :prev_hash, "
            "hash = :hash, intent_seq = :intent_seq WHERE seq = :seq"
        ),
        updates,
    )
    bind.execute(sa.text("ALTER TABLE event ENABLE TRIGGER event_append_only"))


def _record_heads() -> None:
    op.get_bind().execute(
        sa.text(
            "INSERT INTO audit_chain_head (chain, chain_seq, hash) "
            "SELECT DISTINCT ON (chain) chain, chain_seq, hash FROM event "
            "ORDER BY chain, chain_seq DESC"
        )
    )


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
