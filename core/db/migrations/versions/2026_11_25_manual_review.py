"""Manual review: when an unknown outcome outlives the reconciliation horizon.

Revision ID: 2026_11_25_manual_review
Revises: 2026_11_25_initial
Create Date: 2026-11-25
"""

from core.db.migrate import run_sql_script

revision = "2026_11_25_manual_review"
down_revision = "2026_11_25_initial"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payment_intent
    ADD COLUMN manual_review_since TIMESTAMPTZ,
    ADD COLUMN manual_review_resolved_at TIMESTAMPTZ;
-- Operators list the open reviews; the partial index keeps that cheap at any table size.
CREATE INDEX ix_payment_intent_open_manual_review ON payment_intent (manual_review_since)
    WHERE manual_review_since IS NOT NULL AND manual_review_resolved_at IS NULL;
"""

DOWNGRADE = """
DROP INDEX ix_payment_intent_open_manual_review;
ALTER TABLE payment_intent
    DROP COLUMN manual_review_since,
    DROP COLUMN manual_review_resolved_at;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
