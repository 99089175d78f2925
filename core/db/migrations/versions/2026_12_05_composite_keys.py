"""One key instead of two: a transaction's and a payment event's (payment_intent_id,
merchant_id) refer to payment_intent(id, merchant_id), and a webhook delivery's (endpoint_id,
merchant_id) to webhook_endpoint(id, merchant_id). Each replaces the key to the parent and the
key to the merchant: one check per insert instead of two, no lock on the merchant's row, and a
row can no longer name another merchant than its parent's. A payment's event must name its
merchant (a key with a NULL column checks nothing); an event about no payment keeps no key on
its merchant (see core/db/tables.py).

Revision ID: 2026_12_05_composite_keys
Revises: 2026_12_04_per_payment_chains
Create Date: 2026-12-05
"""

from core.db.migrate import run_sql_script

revision = "2026_12_05_composite_keys"
down_revision = "2026_12_04_per_payment_chains"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payment_intent ADD CONSTRAINT uq_payment_intent_id_merchant_id
    UNIQUE (id, merchant_id);
ALTER TABLE webhook_endpoint ADD CONSTRAINT uq_webhook_endpoint_id_merchant_id
    UNIQUE (id, merchant_id);

ALTER TABLE "transaction" DROP CONSTRAINT fk_transaction_merchant_id_merchant;
ALTER TABLE "transaction" DROP CONSTRAINT fk_transaction_payment_intent_id_payment_intent;
ALTER TABLE "transaction" ADD CONSTRAINT fk_transaction_payment_intent_id_payment_intent
    FOREIGN KEY (payment_intent_id, merchant_id) REFERENCES payment_intent (id, merchant_id);

ALTER TABLE event DROP CONSTRAINT fk_event_merchant_id_merchant;
ALTER TABLE event DROP CONSTRAINT fk_event_payment_intent_id_payment_intent;
ALTER TABLE event ADD CONSTRAINT fk_event_payment_intent_id_payment_intent
    FOREIGN KEY (payment_intent_id, merchant_id) REFERENCES payment_intent (id, merchant_id);
ALTER TABLE event ADD CONSTRAINT ck_event_payment_event_has_merchant
    CHECK (payment_intent_id IS NULL OR merchant_id IS NOT NULL);

ALTER TABLE webhook_delivery DROP CONSTRAINT fk_webhook_delivery_merchant_id_merchant;
ALTER TABLE webhook_delivery DROP CONSTRAINT fk_webhook_delivery_endpoint_id_webhook_endpoint;
ALTER TABLE webhook_delivery ADD CONSTRAINT fk_webhook_delivery_endpoint_id_webhook_endpoint
    FOREIGN KEY (endpoint_id, merchant_id) REFERENCES webhook_endpoint (id, merchant_id);
"""

DOWNGRADE = """
ALTER TABLE webhook_delivery DROP CONSTRAINT fk_webhook_delivery_endpoint_id_webhook_endpoint;
ALTER TABLE webhook_delivery ADD CONSTRAINT fk_webhook_delivery_endpoint_id_webhook_endpoint
    FOREIGN KEY (endpoint_id) REFERENCES webhook_endpoint (id);
ALTER TABLE webhook_delivery ADD CONSTRAINT fk_webhook_delivery_merchant_id_merchant
    FOREIGN KEY (merchant_id) REFERENCES merchant (id);

ALTER TABLE event DROP CONSTRAINT ck_event_payment_event_has_merchant;
ALTER TABLE event DROP CONSTRAINT fk_event_payment_intent_id_payment_intent;
ALTER TABLE event ADD CONSTRAINT fk_event_payment_intent_id_payment_intent
    FOREIGN KEY (payment_intent_id) REFERENCES payment_intent (id);
ALTER TABLE event ADD CONSTRAINT fk_event_merchant_id_merchant
    FOREIGN KEY (merchant_id) REFERENCES merchant (id);

ALTER TABLE "transaction" DROP CONSTRAINT fk_transaction_payment_intent_id_payment_intent;
ALTER TABLE "transaction" ADD CONSTRAINT fk_transaction_payment_intent_id_payment_intent
    FOREIGN KEY (payment_intent_id) REFERENCES payment_intent (id);
ALTER TABLE "transaction" ADD CONSTRAINT fk_transaction_merchant_id_merchant
    FOREIGN KEY (merchant_id) REFERENCES merchant (id);

ALTER TABLE webhook_endpoint DROP CONSTRAINT uq_webhook_endpoint_id_merchant_id;
ALTER TABLE payment_intent DROP CONSTRAINT uq_payment_intent_id_merchant_id;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
