"""Per-key rate limit in shards: a key's bucket may be split into rows (public_key, shard), so
that a key allowed many requests a second does not queue them all on one row's lock
(api/rate_limit.py). Existing buckets become shard 0, which is the whole bucket of every key
at the default rate; a bigger key's shard 0 is capped at its share on its next use.

Revision ID: 2026_12_04_rate_limit_shards
Revises: 2026_11_30_event_publication
Create Date: 2026-12-04
"""

from core.db.migrate import run_sql_script

revision = "2026_12_04_rate_limit_shards"
down_revision = "2026_11_30_event_publication"
branch_labels = None
depends_on = None

# ALTER TABLE keeps the table UNLOGGED.
UPGRADE = """
ALTER TABLE rate_limit_bucket ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE rate_limit_bucket ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE rate_limit_bucket DROP CONSTRAINT pk_rate_limit_bucket;
ALTER TABLE rate_limit_bucket ADD CONSTRAINT pk_rate_limit_bucket
    PRIMARY KEY (public_key, shard);
"""

# Shard 0 stays each key's bucket: one row per key again (a sharded key's row then holds only
# its share, which refills at the key's whole rate from there).
DOWNGRADE = """
DELETE FROM rate_limit_bucket WHERE shard <> 0;
ALTER TABLE rate_limit_bucket DROP CONSTRAINT pk_rate_limit_bucket;
ALTER TABLE rate_limit_bucket ADD CONSTRAINT pk_rate_limit_bucket PRIMARY KEY (public_key);
ALTER TABLE rate_limit_bucket DROP COLUMN shard;
"""


def upgrade() -> None:
    run_sql_script(UPGRADE)


def downgrade() -> None:
    run_sql_script(DOWNGRADE)
