"""No foreign key to the merchant on the tables every payment writes: payment_intent,
card_token and idempotency_record.

A key's check takes a FOR KEY SHARE lock on the merchant's row for every insert (and for an
update of a row inserted in the same transaction). Concurrent lockers of one row share it
through a MultiXact that Postgres rebuilds, with every current member, for each new locker:
one busy merchant's payments all queue on its row, and each check is a statement of its own
(three of them in a create + charge). Their writers take the merchant's id from the
authenticated request or from a row they just read, and what the keys protected (a row naming
a merchant that does not exist) is kept by merchants never being deleted or renamed: a
trigger refuses both. transaction and event rows name their merchant through their intent's
(payment_intent_id, merchant_id) key.

Revision ID: 2026_12_05_no_merchant_fk_locks
Revises: 2026_12_05_reversal_reference
Create Date: 2026-12-05
"""

from core.db.migrate import run_sql_script

revision = "2026_12_05_no_merchant_fk_locks"
down_revision = "2026_12_05_reversal_reference"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payment_intent DROP CONSTRAINT fk_payment_intent_merchant_id_merchant;
ALTER TABLE card_token DROP CONSTRAINT fk_card_token_merchant_id_merchant;
ALTER TABLE idempotency_record DROP CONSTRAINT fk_idempotency_record_merchant_id_merchant;

CREATE FUNCTION merchant_is_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'merchants are never deleted or renamed (% refused): their payments name '
        'them without a foreign key', TG_OP;
END;
$$;
CREATE TRIGGER merchant_never_deleted BEFORE DELETE ON merchant
    FOR EACH ROW EXECUTE FUNCTION merchant_is_kept();
CREATE TRIGGER merchant_never_renamed BEFORE UPDATE OF id ON merchant
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION merchant_is_kept();
CREATE TRIGGER merchant_no_truncate BEFORE TRUNCATE ON merchant
    FOR EACH STATEMENT EXECUTE FUNCTION merchant_is_kept();
"""

DOWNGRADE = """
DROP TRIGGER merchant_no_truncate ON merchant;
DROP TRIGGER merchant_never_renamed ON merchant;
DROP TRIGGER merchant_never_deleted ON merchant;
DROP FUNCTION merchant_is_kept();

ALTER TABLE idempotency_record ADD CONSTRAINT fk_idempotency_record_merchant_id_merchant
    FOREIGN KEY (merchant_id) REFERENCES merchant (id);
ALTER TABLE card_token ADD CONSTRAINT fk_card_token_merchant_id_merchant
    FOREIGN KEY (merchant_id) REFERENCES merchant (id);
ALTER TABLE payment_intent ADD CONSTRAINT fk_payment_intent_merchant_id_merchant
    FOREIGN KEY (merchant_id) REFERENCES merchant (id);
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
