"""What expires and is deleted off the request path, by the `durapay-housekeeping` schedule
(workflows/housekeeping.py): spent nonces past their window and Idempotency-Key records past
retention. (Card numbers past their retention: core/db/vault.py.)

Each function deletes one bounded batch, oldest first, in one statement (one short range scan
of the expiry index, never a scan of the whole table) and returns how many rows it deleted.
SKIP LOCKED: a row a request holds right now is left for the next batch instead of waited on.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# An Idempotency-Key claim whose request has run this long without an answer was abandoned (its
# process crashed): another request with the key may take it over (api/idempotency.py).
ABANDONED_AFTER = timedelta(seconds=60)

_DELETE_EXPIRED_NONCES = text("""
DELETE FROM request_nonce WHERE (public_key, nonce) IN (
    SELECT public_key, nonce FROM request_nonce WHERE expires_at < now()
    ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED)
""")
_DELETE_EXPIRED_IDEMPOTENCY_RECORDS = text("""
DELETE FROM idempotency_record WHERE (merchant_id, key) IN (
    SELECT merchant_id, key FROM idempotency_record WHERE created_at < :cutoff
    ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED)
""")


async def delete_expired_nonces(connection: AsyncConnection, *, limit: int) -> int:
    """Nonces whose signature window is over: a request carrying one is refused for its
    timestamp anyway (api/authentication.py)."""
    result = await connection.execute(_DELETE_EXPIRED_NONCES, {"limit": limit})
    return int(result.rowcount)


async def delete_expired_idempotency_records(
    connection: AsyncConnection, now: datetime, retention: timedelta, *, limit: int
) -> int:
    """Records past both retention and `ABANDONED_AFTER`: a request still running keeps its
    claim even under a retention shorter than that."""
    result = await connection.execute(
        _DELETE_EXPIRED_IDEMPOTENCY_RECORDS,
        {"cutoff": now - max(retention, ABANDONED_AFTER), "limit": limit},
    )
    return int(result.rowcount)
