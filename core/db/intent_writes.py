"""The API's create in plain SQL: the intent, its `payment.created` (the first event of a new
chain, so no tail to read) and that event's webhook deliveries, in two statements on the
caller's connection and inside its transaction (the request's, which the idempotency machinery
commits with the stored answer)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from core.db.deliveries import DeliveryTarget, planned_deliveries
from core.db.payment_records import RecordWrite, write_statement
from core.db.queries import chained_event_row, event_data, event_id_for
from core.domain import IntentStatus

CREATED_EVENT = "payment.created"

# The intent as inserted (server defaults: times, amounts), the time its event carries, and
# the merchant's enabled endpoints. JSON as text: JSONB's own key order, whatever the codec.
_INSERT_INTENT = """
WITH inserted AS (
  INSERT INTO payment_intent (id, merchant_id, amount_in_cents, currency, description,
                              capture_method, status, metadata)
  VALUES ($1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::text, $8::jsonb)
  RETURNING created_at, updated_at, metadata::text AS metadata, amount_capturable,
            amount_received, amount_refunded
)
SELECT inserted.*, clock_timestamp() AS now,
  (SELECT coalesce(json_agg(json_build_array(e.id, e.enabled_events) ORDER BY e.id), '[]')
     FROM webhook_endpoint AS e
    WHERE e.merchant_id = $2::text AND e.status = 'enabled' AND e.deleted_at IS NULL
  )::text AS endpoints
FROM inserted
"""


@dataclass
class InsertedIntent:
    """A created intent's columns as stored, and the deliveries its event owes (to start once
    the transaction commits; none when the merchant has no endpoint)."""

    id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    description: str | None
    capture_method: str
    status: str
    amount_capturable: int
    amount_received: int
    amount_refunded: int
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    deliveries: list[str]


async def insert_payment_intent(
    connection: AsyncConnection,
    *,
    intent_id: str,
    merchant_id: str,
    amount_in_cents: int,
    currency: str,
    description: str | None,
    capture_method: str,
    metadata: dict[str, str],
) -> InsertedIntent:
    row = (
        await connection.exec_driver_sql(
            _INSERT_INTENT,
            (
                intent_id,
                merchant_id,
                amount_in_cents,
                currency,
                description,
                capture_method,
                IntentStatus.CREATED.value,
                json.dumps(metadata),
            ),
        )
    ).one()
    intent = InsertedIntent(
        id=intent_id,
        merchant_id=merchant_id,
        amount_in_cents=amount_in_cents,
        currency=currency,
        description=description,
        capture_method=capture_method,
        status=IntentStatus.CREATED.value,
        amount_capturable=row.amount_capturable,
        amount_received=row.amount_received,
        amount_refunded=row.amount_refunded,
        metadata=json.loads(row.metadata),
        created_at=row.created_at,
        updated_at=row.updated_at,
        deliveries=[],
    )
    event: dict[str, Any] = chained_event_row(
        chain=intent_id,
        tail_seq=None,
        tail_hash=None,
        now=row.now,
        event_id=event_id_for(f"{intent_id}:created"),
        merchant_id=merchant_id,
        event_type=CREATED_EVENT,
        data=event_data(intent, None, None),
        payment_intent_id=intent_id,
        transaction_id=None,
        in_intent_story=True,
    )
    deliveries = planned_deliveries(
        merchant_id,
        [DeliveryTarget(endpoint, events) for endpoint, events in json.loads(row.endpoints)],
        [(event["id"], CREATED_EVENT)],
    )
    statement, values = write_statement(RecordWrite(event=event, deliveries=deliveries))
    await connection.exec_driver_sql(statement, tuple(values))
    intent.deliveries = [d["id"] for d in deliveries]
    return intent
