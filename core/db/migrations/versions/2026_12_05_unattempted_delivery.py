"""The webhook reaper's index: deliveries still pending without an attempt, oldest first. A
partial index, so it holds only the deliveries of the last seconds (and any stranded one),
whatever the table's size.

Revision ID: 2026_12_05_unattempted_delivery
Revises: 2026_12_05_composite_keys
Create Date: 2026-12-05
"""

from core.db.migrate import run_sql_script

revision = "2026_12_05_unattempted_delivery"
down_revision = "2026_12_05_composite_keys"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX ix_webhook_delivery_unattempted ON webhook_delivery (created_at, id)
    WHERE status = 'pending' AND attempt_count = 0;
"""

DOWNGRADE = """
DROP INDEX ix_webhook_delivery_unattempted;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
