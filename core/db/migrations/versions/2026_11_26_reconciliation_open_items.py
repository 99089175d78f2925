"""Reconciliation discrepancies become open items: one per (reference, kind) until resolved.

Revision ID: 2026_11_26_open_discrepancies
Revises: 2026_11_25_payment_lifecycle
Create Date: 2026-11-26
"""

from core.db.migrate import run_sql_script

revision = "2026_11_26_open_discrepancies"
down_revision = "2026_11_25_payment_lifecycle"
branch_labels = None
depends_on = None

UPGRADE = """
DROP TRIGGER reconciliation_discrepancy_append_only ON reconciliation_discrepancy;
ALTER TABLE reconciliation_discrepancy
    DROP CONSTRAINT uq_reconciliation_discrepancy_run_id_network_reference,
    DROP CONSTRAINT ck_reconciliation_discrepancy_kind,
    -- NULL: opened by other code than a sweep (the payment workflow).
    ALTER COLUMN run_id DROP NOT NULL,
    ADD COLUMN detail JSONB DEFAULT '{}'::jsonb NOT NULL,
    ADD COLUMN last_seen_run_id VARCHAR,
    ADD COLUMN last_seen_at TIMESTAMPTZ,
    ADD COLUMN resolved_at TIMESTAMPTZ,
    ADD COLUMN resolution_note VARCHAR,
    ADD CONSTRAINT ck_reconciliation_discrepancy_kind CHECK (kind IN (
        'charged_at_network_not_succeeded_here', 'succeeded_here_not_at_network',
        'amount_mismatch', 'operation_mismatch', 'stuck_unsettled',
        'network_contradicts_recorded_outcome')),
    ADD CONSTRAINT ck_reconciliation_discrepancy_resolution
        CHECK (resolution_note IS NULL OR resolved_at IS NOT NULL);
-- Earlier sweeps wrote a row per run per problem. The first report of each (reference, kind)
-- becomes its open item, last seen by the latest report; the repeats are resolved as its
-- duplicates. The next sweep clears the open ones it no longer finds.
WITH report AS (
    SELECT id,
           row_number() OVER problem AS n,
           first_value(id) OVER problem AS first_id,
           last_value(run_id) OVER every_report AS last_run_id,
           max(created_at) OVER every_report AS last_at
    FROM reconciliation_discrepancy
    WINDOW problem AS (PARTITION BY network_reference, kind ORDER BY created_at, id),
           every_report AS (PARTITION BY network_reference, kind ORDER BY created_at, id
                            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
UPDATE reconciliation_discrepancy d SET
    last_seen_run_id = CASE WHEN r.n = 1 THEN r.last_run_id ELSE d.run_id END,
    last_seen_at = CASE WHEN r.n = 1 THEN r.last_at ELSE d.created_at END,
    resolved_at = CASE WHEN r.n = 1 THEN NULL ELSE d.created_at END,
    resolution_note = CASE WHEN r.n = 1 THEN NULL
                           ELSE 'duplicate of ' || r.first_id || ' (reported again by a sweep)'
                      END
FROM report r WHERE d.id = r.id;
-- One open item per problem: open_discrepancy() inserts ON CONFLICT against this index.
CREATE UNIQUE INDEX uq_reconciliation_discrepancy_open_network_reference_kind
    ON reconciliation_discrepancy (network_reference, kind) WHERE resolved_at IS NULL;
-- A run's report is the items it opened or saw again (a retried sweep reads it back).
CREATE INDEX ix_reconciliation_discrepancy_run_id ON reconciliation_discrepancy (run_id);
CREATE INDEX ix_reconciliation_discrepancy_last_seen_run_id
    ON reconciliation_discrepancy (last_seen_run_id);
-- Still evidence: an open item may only be seen again or resolved; a resolved one is final.
CREATE FUNCTION reconciliation_discrepancy_resolve_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mutable CONSTANT text[] := '{last_seen_run_id,last_seen_at,resolved_at,resolution_note}';
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.resolved_at IS NULL
            AND to_jsonb(NEW) - mutable = to_jsonb(OLD) - mutable THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'an open discrepancy may only be seen again or resolved (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER reconciliation_discrepancy_resolve_only
    BEFORE UPDATE OR DELETE ON reconciliation_discrepancy
    FOR EACH ROW EXECUTE FUNCTION reconciliation_discrepancy_resolve_only();

-- A run counts what it found as newly opened or still open, and the items it cleared.
ALTER TABLE reconciliation_run
    ADD COLUMN newly_opened INTEGER DEFAULT 0 NOT NULL,
    ADD COLUMN still_open INTEGER DEFAULT 0 NOT NULL,
    ADD COLUMN cleared INTEGER DEFAULT 0 NOT NULL;
-- Earlier runs, counted like the items above: a repeat report was a problem still open.
ALTER TABLE reconciliation_run DISABLE TRIGGER reconciliation_run_append_only;
UPDATE reconciliation_run r SET newly_opened = o.opened, still_open = r.discrepancies - o.opened
FROM (SELECT run_id, count(*) FILTER (WHERE resolved_at IS NULL) AS opened
      FROM reconciliation_discrepancy GROUP BY run_id) o
WHERE o.run_id = r.id;
ALTER TABLE reconciliation_run ENABLE TRIGGER reconciliation_run_append_only;
ALTER TABLE reconciliation_run
    ALTER COLUMN newly_opened DROP DEFAULT,
    ALTER COLUMN still_open DROP DEFAULT,
    ALTER COLUMN cleared DROP DEFAULT;
"""

# Going back keeps what the older schema can hold: sweep reports of its four kinds, each one
# row as it was first reported. Resolutions and items opened outside a sweep are dropped
# (their `reconciliation.discrepancy` events stay, like every event).
DOWNGRADE = """
ALTER TABLE reconciliation_run
    DROP COLUMN cleared, DROP COLUMN still_open, DROP COLUMN newly_opened;
DROP TRIGGER reconciliation_discrepancy_resolve_only ON reconciliation_discrepancy;
DROP FUNCTION reconciliation_discrepancy_resolve_only();
DELETE FROM reconciliation_discrepancy
WHERE run_id IS NULL OR kind NOT IN (
    'charged_at_network_not_succeeded_here', 'succeeded_here_not_at_network',
    'amount_mismatch', 'operation_mismatch');
DROP INDEX ix_reconciliation_discrepancy_last_seen_run_id;
DROP INDEX ix_reconciliation_discrepancy_run_id;
DROP INDEX uq_reconciliation_discrepancy_open_network_reference_kind;
ALTER TABLE reconciliation_discrepancy
    DROP CONSTRAINT ck_reconciliation_discrepancy_resolution,
    DROP CONSTRAINT ck_reconciliation_discrepancy_kind,
    DROP COLUMN resolution_note,
    DROP COLUMN resolved_at,
    DROP COLUMN last_seen_at,
    DROP COLUMN last_seen_run_id,
    DROP COLUMN detail,
    ALTER COLUMN run_id SET NOT NULL,
    ADD CONSTRAINT uq_reconciliation_discrepancy_run_id_network_reference
        UNIQUE (run_id, network_reference),
    ADD CONSTRAINT ck_reconciliation_discrepancy_kind CHECK (kind IN (
        'charged_at_network_not_succeeded_here', 'succeeded_here_not_at_network',
        'amount_mismatch', 'operation_mismatch'));
CREATE TRIGGER reconciliation_discrepancy_append_only
    BEFORE UPDATE OR DELETE ON reconciliation_discrepancy
    FOR EACH ROW EXECUTE FUNCTION event_is_append_only();
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
