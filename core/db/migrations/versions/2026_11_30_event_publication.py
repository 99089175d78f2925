"""The event stream: a logical replication publication on the event table, read through a slot
by `durapay events stream` (core/db/replication.py). Creating a publication needs no particular
`wal_level`; reading it through a slot needs `wal_level = logical`.

Revision ID: 2026_11_30_event_publication
Revises: 2026_11_29_audit_chain
Create Date: 2026-11-30
"""

from core.db.migrate import run_sql_script

revision = "2026_11_30_event_publication"
down_revision = "2026_11_29_audit_chain"
branch_labels = None
depends_on = None

# Inserts are the stream; updates, deletes and truncates are published too so that a consumer
# sees (and reports) a rewrite of the append-only table by someone who set its trigger aside.
UPGRADE = "CREATE PUBLICATION durapay_events FOR TABLE event;"

DOWNGRADE = "DROP PUBLICATION durapay_events;"


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
