"""Card numbers are deleted once no authorization can need them (core/db/vault.py): the PAN's
ciphertext becomes nullable, `pan_deleted_at` says when it went, and a partial index finds the
ones still held, oldest first.

Revision ID: 2026_11_28_card_number_retention
Revises: 2026_11_27_idempotency_retention
Create Date: 2026-11-28
"""

from core.db.migrate import run_sql_script

revision = "2026_11_28_card_number_retention"
down_revision = "2026_11_27_idempotency_retention"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE card_token ALTER COLUMN pan_ciphertext DROP NOT NULL;
ALTER TABLE card_token ADD COLUMN pan_deleted_at TIMESTAMPTZ;
CREATE INDEX ix_card_token_pan_held_created_at ON card_token (created_at)
    WHERE pan_ciphertext IS NOT NULL;
"""

# A deleted card number stays deleted: its row gets an empty ciphertext, which decrypts to
# nothing (the older code only ever decrypts it to authorize, which no settled charge does).
DOWNGRADE = """
DROP INDEX ix_card_token_pan_held_created_at;
ALTER TABLE card_token DROP COLUMN pan_deleted_at;
UPDATE card_token SET pan_ciphertext = ''::bytea WHERE pan_ciphertext IS NULL;
ALTER TABLE card_token ALTER COLUMN pan_ciphertext SET NOT NULL;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
