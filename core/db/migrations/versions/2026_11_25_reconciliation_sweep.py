"""Reconciliation sweep: append-only reports of what we and the card network disagree on.

Revision ID: 2026_11_25_reconciliation_sweep
Revises: 2026_11_25_manual_review
Create Date: 2026-11-25
"""

from core.db.migrate import run_sql_script

revision = "2026_11_25_reconciliation_sweep"
down_revision = "2026_11_25_manual_review"
branch_labels = None
depends_on = None

UPGRADE = """
-- A discrepancy on a reference we never recorded has no merchant, yet its event must be kept.
ALTER TABLE event ALTER COLUMN merchant_id DROP NOT NULL;
CREATE TABLE reconciliation_run (
    id VARCHAR NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end TIMESTAMPTZ NOT NULL,
    trigger VARCHAR NOT NULL,
    transactions_checked INTEGER NOT NULL,
    ledger_entries_checked INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    discrepancies INTEGER NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_reconciliation_run PRIMARY KEY (id),
    CONSTRAINT ck_reconciliation_run_trigger CHECK (trigger IN ('schedule', 'manual')),
    CONSTRAINT ck_reconciliation_run_window CHECK (window_start <= window_end)
);
CREATE INDEX ix_reconciliation_run_created_at ON reconciliation_run (created_at);
CREATE TABLE reconciliation_discrepancy (
    id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    network_reference VARCHAR NOT NULL,
    merchant_id VARCHAR,
    payment_intent_id VARCHAR,
    transaction_id VARCHAR,
    our_status VARCHAR,
    network_status VARCHAR,
    our_amount_in_cents BIGINT,
    network_amount_in_cents BIGINT,
    currency VARCHAR,
    network_currency VARCHAR,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_reconciliation_discrepancy PRIMARY KEY (id),
    CONSTRAINT fk_reconciliation_discrepancy_run_id_reconciliation_run FOREIGN KEY (run_id)
        REFERENCES reconciliation_run (id),
    CONSTRAINT uq_reconciliation_discrepancy_run_id_network_reference
        UNIQUE (run_id, network_reference),
    CONSTRAINT ck_reconciliation_discrepancy_kind CHECK (kind IN (
        'charged_at_network_not_succeeded_here', 'succeeded_here_not_at_network',
        'amount_mismatch', 'operation_mismatch'))
);
-- "Has this reference been reported before?" is the operator's first question.
CREATE INDEX ix_reconciliation_discrepancy_network_reference
    ON reconciliation_discrepancy (network_reference);
-- The sweep selects our transactions by creation time; without this it scans the whole table.
CREATE INDEX ix_transaction_created_at ON "transaction" (created_at);
-- Reports are evidence, like the audit trail: the same trigger function refuses rewrites.
CREATE TRIGGER reconciliation_run_append_only BEFORE UPDATE OR DELETE ON reconciliation_run
    FOR EACH ROW EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER reconciliation_run_no_truncate BEFORE TRUNCATE ON reconciliation_run
    FOR EACH STATEMENT EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER reconciliation_discrepancy_append_only
    BEFORE UPDATE OR DELETE ON reconciliation_discrepancy
    FOR EACH ROW EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER reconciliation_discrepancy_no_truncate BEFORE TRUNCATE ON reconciliation_discrepancy
    FOR EACH STATEMENT EXECUTE FUNCTION event_is_append_only();
"""

# Going back drops the reports, so their events go too: the older code has no filter that hides
# operator events from merchants, and a NULL merchant_id would block NOT NULL. The append-only
# trigger is lifted for that one statement, inside this migration's transaction.
DOWNGRADE = """
DROP INDEX ix_transaction_created_at;
DROP TABLE reconciliation_discrepancy;
DROP TABLE reconciliation_run;
ALTER TABLE event DISABLE TRIGGER event_append_only;
DELETE FROM event WHERE type LIKE 'reconciliation.%';
ALTER TABLE event ENABLE TRIGGER event_append_only;
ALTER TABLE event ALTER COLUMN merchant_id SET NOT NULL;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
