"""An Idempotency-Key's record in plain SQL (api/idempotency.py says what the key means).

Every request with a key runs these, two per POST, so they are driver SQL on the caller's
connection: no statement to build, compile or cache-key per call, no table model to build
from a row. Each function runs one statement inside whatever transaction the caller holds
(or none, on an autocommit connection) and never commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from core.db.housekeeping import ABANDONED_AFTER

# One statement, so two requests with an expired key cannot both take it: the second waits
# on the first's row lock, then finds the record fresh and no longer expired. A record is
# expired once past retention and either answered or also past ABANDONED_AFTER ($7): a
# request still running is never overtaken by a retention shorter than that.
_CLAIM = """
INSERT INTO idempotency_record AS record (merchant_id, key, endpoint, request_hash, created_at)
VALUES ($1::text, $2::text, $3::text, $4::text, $5::timestamptz)
ON CONFLICT (merchant_id, key) DO UPDATE
  SET endpoint = excluded.endpoint, request_hash = excluded.request_hash,
      response_status = NULL, response_body = NULL, created_at = excluded.created_at
  WHERE record.created_at < $6::timestamptz
    AND (record.response_status IS NOT NULL OR record.created_at < $7::timestamptz)
RETURNING record.key
"""
# JSONB as text: the driver's JSON decoding would be a second parse (api/idempotency.py
# reads the one key it needs).
_READ = """
SELECT endpoint, request_hash, response_status, response_body::text AS response_body,
       created_at
FROM idempotency_record WHERE merchant_id = $1::text AND key = $2::text
"""
_TAKE_OVER = """
UPDATE idempotency_record SET created_at = $4::timestamptz
WHERE merchant_id = $1::text AND key = $2::text AND created_at = $3::timestamptz
RETURNING key
"""
_STORE = """
UPDATE idempotency_record SET response_status = $3::integer, response_body = $4::jsonb
WHERE merchant_id = $1::text AND key = $2::text
"""
_RELEASE = """
DELETE FROM idempotency_record
WHERE merchant_id = $1::text AND key = $2::text AND response_status IS NULL
"""


@dataclass(frozen=True, slots=True)
class IdempotencyRecordRow:
    """A key's record as read back when its claim found it taken."""

    endpoint: str
    request_hash: str
    response_status: int | None
    response_body: dict[str, Any] | None
    created_at: datetime


async def claim_record(
    connection: AsyncConnection,
    *,
    merchant_id: str,
    key: str,
    endpoint: str,
    request_hash: str,
    now: datetime,
    retention: timedelta,
) -> bool:
    """Insert the key's record, or take over one past `retention`: True if this request now
    holds the key, False if a live record is there (read it with `read_record`)."""
    row = (
        await connection.exec_driver_sql(
            _CLAIM,
            (merchant_id, key, endpoint, request_hash, now, now - retention, now - ABANDONED_AFTER),
        )
    ).first()
    return row is not None


async def read_record(
    connection: AsyncConnection, *, merchant_id: str, key: str
) -> IdempotencyRecordRow:
    row = (await connection.exec_driver_sql(_READ, (merchant_id, key))).one()
    return IdempotencyRecordRow(
        endpoint=row.endpoint,
        request_hash=row.request_hash,
        response_status=row.response_status,
        response_body=None if row.response_body is None else json.loads(row.response_body),
        created_at=row.created_at,
    )


async def take_over_record(
    connection: AsyncConnection, *, merchant_id: str, key: str, claimed_at: datetime, now: datetime
) -> bool:
    """Renew an abandoned claim read as claimed at `claimed_at`: False if another request
    renewed it first."""
    row = (
        await connection.exec_driver_sql(_TAKE_OVER, (merchant_id, key, claimed_at, now))
    ).first()
    return row is not None


async def store_response(
    connection: AsyncConnection, *, merchant_id: str, key: str, status: int, body: dict[str, Any]
) -> None:
    await connection.exec_driver_sql(_STORE, (merchant_id, key, status, json.dumps(body)))


async def release_claim(connection: AsyncConnection, *, merchant_id: str, key: str) -> None:
    """Delete the key's record unless it holds an answer."""
    await connection.exec_driver_sql(_RELEASE, (merchant_id, key))
