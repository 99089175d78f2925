"""Idempotency-Key handling, as Stripe does it.

The first request with a key claims it; the stored response is replayed for the same key and
the same parameters; the same key with other parameters is a 400; a key whose first request is
still running is a 409. A claim abandoned by a crashed process can be taken over after a while.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import ApiError, ConflictError, InvalidRequestError
from core.db.tables import IdempotencyRecord

ABANDONED_AFTER = timedelta(seconds=60)


@dataclass
class StoredResponse:
    status: int
    body: dict[str, Any]


def request_fingerprint(secret: bytes, endpoint: str, payload: Any) -> str:
    """Keyed hash of the parameters: a charge body holds a PAN, so a bare hash would leak it."""
    canonical = json.dumps([endpoint, payload], sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


async def claim(session: AsyncSession, *, merchant_id: str, key: str, endpoint: str,
                fingerprint: str) -> StoredResponse | None:
    """Claim the key for this request, or return the response stored for it."""
    inserted = await session.exec(
        insert(IdempotencyRecord).values(merchant_id=merchant_id, key=key, endpoint=endpoint,
                                         request_hash=fingerprint)
        .on_conflict_do_nothing().returning(IdempotencyRecord.key)
    )
    if inserted.first() is not None:
        await session.commit()
        return None
    record = (await session.exec(select(IdempotencyRecord).where(
        IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key))).one()
    await session.commit()
    if record.endpoint != endpoint or record.request_hash != fingerprint:
        raise InvalidRequestError(
            "idempotency_key_reused",
            "Keys for idempotent requests can only be used with the same parameters they were "
            "first used with.", "Idempotency-Key")
    if record.response_status is not None and record.response_body is not None:
        return StoredResponse(record.response_status, record.response_body)
    if datetime.now(UTC) - record.created_at < ABANDONED_AFTER:
        raise ConflictError("idempotency_key_in_use",
                            "A request with this Idempotency-Key is still being processed.")
    taken = await session.exec(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key,
               IdempotencyRecord.created_at == record.created_at)
        .values(created_at=datetime.now(UTC)).returning(IdempotencyRecord.key))
    if taken.first() is None:
        await session.rollback()
        raise ConflictError("idempotency_key_in_use",
                            "A request with this Idempotency-Key is still being processed.")
    await session.commit()
    return None


async def store(session: AsyncSession, *, merchant_id: str, key: str, status: int,
                body: dict[str, Any]) -> None:
    await session.exec(update(IdempotencyRecord).where(
        IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key,
    ).values(response_status=status, response_body=body))
    await session.commit()


async def release(session: AsyncSession, *, merchant_id: str, key: str) -> None:
    """Forget a claim whose request failed before doing anything, so a retry can run."""
    await session.rollback()
    await session.exec(delete(IdempotencyRecord).where(
        IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key,
        IdempotencyRecord.response_status.is_(None)))  # type: ignore[union-attr]
    await session.commit()


async def respond_once(session: AsyncSession, *, secret: bytes, merchant_id: str,
                       key: str | None, endpoint: str, payload: Any,
                       handle: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
                       ) -> tuple[int, dict[str, Any]]:
    """Run `handle` under an Idempotency-Key: the first answer (errors included, except 409 and
    503, which a retry should redo) is stored and replayed for the same key and parameters.

    What `handle` leaves uncommitted in `session` commits with the stored answer, in one
    database transaction: a crash in between can leave neither half alone."""
    if not key:
        return await handle()
    stored = await claim(session, merchant_id=merchant_id, key=key, endpoint=endpoint,
                         fingerprint=request_fingerprint(secret, endpoint, payload))
    if stored is not None:
        return stored.status, stored.body
    try:
        status, body = await handle()
    except ApiError as error:
        if error.status in (409, 503):
            await release(session, merchant_id=merchant_id, key=key)
        else:
            await store(session, merchant_id=merchant_id, key=key, status=error.status,
                        body=error.body())
        raise
    except Exception:
        await release(session, merchant_id=merchant_id, key=key)
        raise
    await store(session, merchant_id=merchant_id, key=key, status=status, body=body)
    return status, body
