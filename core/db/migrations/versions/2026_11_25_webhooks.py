"""Webhooks: endpoints (encrypted secrets), deliveries and their attempts.

Revision ID: 2026_11_25_webhooks
Revises: 2026_11_25_reconciliation_sweep
Create Date: 2026-11-25
"""

from core.db.migrate import run_sql_script

revision = "2026_11_25_webhooks"
down_revision = "2026_11_25_reconciliation_sweep"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE webhook_endpoint (
    id VARCHAR NOT NULL,
    merchant_id VARCHAR NOT NULL,
    url VARCHAR NOT NULL,
    description VARCHAR,
    enabled_events JSONB NOT NULL,
    status VARCHAR NOT NULL DEFAULT 'enabled',
    disabled_reason VARCHAR,
    secret_ciphertext BYTEA NOT NULL,
    previous_secret_ciphertext BYTEA,
    previous_secret_expires_at TIMESTAMPTZ,
    failing_since TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    updated_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_webhook_endpoint PRIMARY KEY (id),
    CONSTRAINT fk_webhook_endpoint_merchant_id_merchant FOREIGN KEY (merchant_id)
        REFERENCES merchant (id),
    CONSTRAINT ck_webhook_endpoint_status CHECK (status IN ('enabled', 'disabled'))
);
-- Merchants list their endpoints newest first; planning reads the merchant's live ones.
CREATE INDEX ix_webhook_endpoint_merchant_id_created_at_id
    ON webhook_endpoint (merchant_id, created_at DESC, id DESC);
CREATE TABLE webhook_delivery (
    id VARCHAR NOT NULL,
    merchant_id VARCHAR NOT NULL,
    event_id VARCHAR NOT NULL,
    endpoint_id VARCHAR NOT NULL,
    origin VARCHAR NOT NULL DEFAULT 'event',
    status VARCHAR NOT NULL DEFAULT 'pending',
    attempt_count INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    updated_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_webhook_delivery PRIMARY KEY (id),
    CONSTRAINT fk_webhook_delivery_merchant_id_merchant FOREIGN KEY (merchant_id)
        REFERENCES merchant (id),
    CONSTRAINT fk_webhook_delivery_event_id_event FOREIGN KEY (event_id) REFERENCES event (id),
    CONSTRAINT fk_webhook_delivery_endpoint_id_webhook_endpoint FOREIGN KEY (endpoint_id)
        REFERENCES webhook_endpoint (id),
    CONSTRAINT ck_webhook_delivery_status
        CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
    CONSTRAINT ck_webhook_delivery_origin CHECK (origin IN ('event', 'redeliver'))
);
CREATE INDEX ix_webhook_delivery_event_id ON webhook_delivery (event_id);
CREATE INDEX ix_webhook_delivery_endpoint_id_created_at_id
    ON webhook_delivery (endpoint_id, created_at DESC, id DESC);
CREATE TABLE webhook_delivery_attempt (
    delivery_id VARCHAR NOT NULL,
    attempt_number INTEGER NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL,
    status_code INTEGER,
    error VARCHAR,
    duration_ms INTEGER NOT NULL,
    response_body VARCHAR,
    CONSTRAINT pk_webhook_delivery_attempt PRIMARY KEY (delivery_id, attempt_number),
    CONSTRAINT fk_webhook_delivery_attempt_delivery_id_webhook_delivery FOREIGN KEY (delivery_id)
        REFERENCES webhook_delivery (id)
);
"""

DOWNGRADE = """
DROP TABLE webhook_delivery_attempt;
DROP TABLE webhook_delivery;
DROP TABLE webhook_endpoint;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
