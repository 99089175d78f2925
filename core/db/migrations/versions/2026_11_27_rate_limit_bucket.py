"""Per-key rate limit: one token bucket per API key, shared by every API process.

Revision ID: 2026_11_27_rate_limit_bucket
Revises: 2026_11_26_open_discrepancies
Create Date: 2026-11-27
"""

from core.db.migrate import run_sql_script

revision = "2026_11_27_rate_limit_bucket"
down_revision = "2026_11_26_open_discrepancies"
branch_labels = None
depends_on = None

UPGRADE = """
-- UNLOGGED: no WAL for a row every request updates; after a crash the table starts empty,
-- which only means every key starts with a full bucket.
CREATE UNLOGGED TABLE rate_limit_bucket (
    public_key VARCHAR NOT NULL,
    tokens DOUBLE PRECISION NOT NULL,
    allowed BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT pk_rate_limit_bucket PRIMARY KEY (public_key)
);
"""

DOWNGRADE = """
DROP TABLE rate_limit_bucket;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
