"""Initial schema: merchants and keys, nonces, card vault, intents, transactions, events.

Revision ID: 2026_11_25_initial
Revises:
Create Date: 2026-11-25
"""

from core.db.migrate import run_sql_script

revision = "2026_11_25_initial"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE merchant (
    id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_merchant PRIMARY KEY (id)
);
CREATE TABLE merchant_key (
    public_key VARCHAR NOT NULL,
    merchant_id VARCHAR NOT NULL,
    secret_ciphertext BYTEA NOT NULL,
    expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_merchant_key PRIMARY KEY (public_key),
    CONSTRAINT fk_merchant_key_merchant_id_merchant FOREIGN KEY (merchant_id)
        REFERENCES merchant (id)
);
CREATE INDEX ix_merchant_key_merchant_id ON merchant_key (merchant_id);
CREATE TABLE request_nonce (
    public_key VARCHAR NOT NULL,
    nonce VARCHAR NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT pk_request_nonce PRIMARY KEY (public_key, nonce)
);
CREATE INDEX ix_request_nonce_expires_at ON request_nonce (expires_at);
CREATE TABLE card_token (
    id VARCHAR NOT NULL,
    merchant_id VARCHAR NOT NULL,
    pan_ciphertext BYTEA NOT NULL,
    brand VARCHAR NOT NULL,
    last4 VARCHAR NOT NULL,
    exp_month INTEGER NOT NULL,
    exp_year INTEGER NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_card_token PRIMARY KEY (id),
    CONSTRAINT fk_card_token_merchant_id_merchant FOREIGN KEY (merchant_id)
        REFERENCES merchant (id)
);
CREATE INDEX ix_card_token_merchant_id ON card_token (merchant_id);
CREATE TABLE payment_intent (
    id VARCHAR NOT NULL,
    merchant_id VARCHAR NOT NULL,
    amount_in_cents BIGINT NOT NULL,
    currency VARCHAR NOT NULL,
    description VARCHAR,
    capture_method VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    amount_capturable BIGINT NOT NULL DEFAULT 0,
    amount_received BIGINT NOT NULL DEFAULT 0,
    amount_refunded BIGINT NOT NULL DEFAULT 0,
    last_error JSONB,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    updated_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_payment_intent PRIMARY KEY (id),
    CONSTRAINT fk_payment_intent_merchant_id_merchant FOREIGN KEY (merchant_id)
        REFERENCES merchant (id),
    CONSTRAINT ck_payment_intent_amount_positive CHECK (amount_in_cents > 0)
);
CREATE INDEX ix_payment_intent_merchant_id ON payment_intent (merchant_id);
CREATE INDEX ix_payment_intent_merchant_id_created_at_id
    ON payment_intent (merchant_id, created_at DESC, id DESC);
CREATE TABLE "transaction" (
    id VARCHAR NOT NULL,
    merchant_id VARCHAR NOT NULL,
    payment_intent_id VARCHAR NOT NULL,
    type VARCHAR NOT NULL,
    amount_in_cents BIGINT NOT NULL,
    currency VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    network_reference VARCHAR NOT NULL,
    card_token_id VARCHAR,
    card_brand VARCHAR,
    card_last4 VARCHAR,
    card_exp_month INTEGER,
    card_exp_year INTEGER,
    failure_code VARCHAR,
    decline_code VARCHAR,
    reconciled BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    updated_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_transaction PRIMARY KEY (id),
    CONSTRAINT fk_transaction_merchant_id_merchant FOREIGN KEY (merchant_id)
        REFERENCES merchant (id),
    CONSTRAINT fk_transaction_payment_intent_id_payment_intent FOREIGN KEY (payment_intent_id)
        REFERENCES payment_intent (id),
    CONSTRAINT fk_transaction_card_token_id_card_token FOREIGN KEY (card_token_id)
        REFERENCES card_token (id),
    CONSTRAINT uq_transaction_network_reference UNIQUE (network_reference)
);
CREATE INDEX ix_transaction_payment_intent_id ON "transaction" (payment_intent_id);
CREATE TABLE event (
    seq BIGSERIAL NOT NULL,
    id VARCHAR NOT NULL,
    merchant_id VARCHAR NOT NULL,
    payment_intent_id VARCHAR,
    transaction_id VARCHAR,
    type VARCHAR NOT NULL,
    data JSONB NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_event PRIMARY KEY (seq),
    CONSTRAINT uq_event_id UNIQUE (id),
    CONSTRAINT fk_event_merchant_id_merchant FOREIGN KEY (merchant_id) REFERENCES merchant (id),
    CONSTRAINT fk_event_payment_intent_id_payment_intent FOREIGN KEY (payment_intent_id)
        REFERENCES payment_intent (id)
);
CREATE INDEX ix_event_payment_intent_id ON event (payment_intent_id);
CREATE INDEX ix_event_merchant_id_seq ON event (merchant_id, seq DESC);
CREATE TABLE idempotency_record (
    merchant_id VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    response_status INTEGER,
    response_body JSONB,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_idempotency_record PRIMARY KEY (merchant_id, key),
    CONSTRAINT fk_idempotency_record_merchant_id_merchant FOREIGN KEY (merchant_id)
        REFERENCES merchant (id)
);
-- The audit trail is append-only: the database itself refuses to rewrite history.
CREATE FUNCTION event_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event rows are immutable (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER event_append_only BEFORE UPDATE OR DELETE ON event
    FOR EACH ROW EXECUTE FUNCTION event_is_append_only();
CREATE TRIGGER event_no_truncate BEFORE TRUNCATE ON event
    FOR EACH STATEMENT EXECUTE FUNCTION event_is_append_only();
"""

DOWNGRADE = """
DROP TABLE idempotency_record;
DROP TABLE event;
DROP FUNCTION event_is_append_only();
DROP TABLE "transaction";
DROP TABLE payment_intent;
DROP TABLE card_token;
DROP TABLE request_nonce;
DROP TABLE merchant_key;
DROP TABLE merchant;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
