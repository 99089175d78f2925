"""A charge's reversal reference: the network reference of the reversal sent for a charge whose
answer was lost and that the network does not know, recorded before the reversal is sent.

Revision ID: 2026_12_05_reversal_reference
Revises: 2026_12_05_unattempted_delivery
Create Date: 2026-12-05
"""

from core.db.migrate import run_sql_script

revision = "2026_12_05_reversal_reference"
down_revision = "2026_12_05_unattempted_delivery"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE "transaction" ADD COLUMN reversal_reference VARCHAR,
    ADD CONSTRAINT uq_transaction_reversal_reference UNIQUE (reversal_reference);
"""

DOWNGRADE = """
ALTER TABLE "transaction" DROP COLUMN reversal_reference;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
