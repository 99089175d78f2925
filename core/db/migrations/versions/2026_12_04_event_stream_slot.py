"""What each event stream consumer's slot has done: whether its initial copy of the table
finished (so a restart never copies again) and the last cursor its sink confirmed (so a
consumer that asks to resume from an older cursor is told those events have left the slot).

Revision ID: 2026_12_04_event_stream_slot
Revises: 2026_12_04_rate_limit_shards
Create Date: 2026-12-04
"""

from core.db.migrate import run_sql_script

revision = "2026_12_04_event_stream_slot"
down_revision = "2026_12_04_rate_limit_shards"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE event_stream_slot (
    slot VARCHAR NOT NULL,
    snapshot BOOLEAN NOT NULL,
    consistent_lsn VARCHAR,
    snapshot_rows BIGINT,
    snapshot_done_at TIMESTAMPTZ,
    last_cursor VARCHAR,
    created_at TIMESTAMPTZ DEFAULT now() NOT NULL,
    CONSTRAINT pk_event_stream_slot PRIMARY KEY (slot)
);
"""

DOWNGRADE = """
DROP TABLE event_stream_slot;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
