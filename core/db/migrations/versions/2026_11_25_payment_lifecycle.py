"""Payment lifecycle: capture, void and refund transactions point at what they act on, and a
canceled intent says why.

Revision ID: 2026_11_25_payment_lifecycle
Revises: 2026_11_25_webhooks
Create Date: 2026-11-25
"""

from core.db.migrate import run_sql_script

revision = "2026_11_25_payment_lifecycle"
down_revision = "2026_11_25_webhooks"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payment_intent ADD COLUMN cancellation_reason VARCHAR;
-- The network reference (authorize/charge/capture) a capture, void or refund acts on.
ALTER TABLE transaction ADD COLUMN parent_reference VARCHAR;
"""

DOWNGRADE = """
ALTER TABLE transaction DROP COLUMN parent_reference;
ALTER TABLE payment_intent DROP COLUMN cancellation_reason;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
