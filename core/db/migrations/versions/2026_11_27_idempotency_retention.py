"""Idempotency records expire (DURAPAY_IDEMPOTENCY_RETENTION_SECONDS): an index on created_at,
so each claim finds a bounded batch of expired records without scanning the table.

Revision ID: 2026_11_27_idempotency_retention
Revises: 2026_11_27_rate_limit_bucket
Create Date: 2026-11-27
"""

from core.db.migrate import run_sql_script

revision = "2026_11_27_idempotency_retention"
down_revision = "2026_11_27_rate_limit_bucket"
branch_labels = None
depends_on = None

# Not CONCURRENTLY (Alembic runs a migration in a transaction), so the build holds writes to
# the table until it ends. Where the table is already large, create the index CONCURRENTLY by
# hand first: IF NOT EXISTS then skips it here.
UPGRADE = """
CREATE INDEX IF NOT EXISTS ix_idempotency_record_created_at ON idempotency_record (created_at);
"""

DOWNGRADE = """
DROP INDEX ix_idempotency_record_created_at;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
