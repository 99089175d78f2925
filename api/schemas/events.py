from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from api.schemas.base import ApiModel, Timestamp, examples, one_of
from core.webhooks import ENDPOINT_DISABLED_EVENT, PAYMENT_EVENT_TYPES

EVENT_TYPES = (*PAYMENT_EVENT_TYPES, ENDPOINT_DISABLED_EVENT)
EVENT_EXAMPLE = {
    "id": "evt_5b0d7e2c94a1f83e6c2d0a19",
    "object": "event",
    "type": "payment.succeeded",
    "createdAt": "2026-11-25T10:15:31.870Z",
    "sequence": 4187,
    "intentSequence": 3,
    "data": {
        "paymentId": "pi_3f9c2a7e51b04d8e6a1c0b27",
        "amountInCents": 2499,
        "currency": "usd",
        "status": "succeeded",
        "amountCapturable": 0,
        "amountReceived": 2499,
        "amountRefunded": 0,
        "transactionId": "txn_8e41c09b2d7a5f36c1e0a947",
        "previous": {
            "status": "processing",
            "amountInCents": 2499,
            "amountCapturable": 0,
            "amountReceived": 0,
            "amountRefunded": 0,
        },
        "transaction": {
            "id": "txn_8e41c09b2d7a5f36c1e0a947",
            "type": "charge",
            "status": "succeeded",
            "amountInCents": 2499,
        },
    },
}


class EventOut(ApiModel):
    model_config = ConfigDict(json_schema_extra=examples(EVENT_EXAMPLE))

    id: str
    object: Literal["event"] = "event"
    # `payment.*` for a payment's changes; `webhook_endpoint.disabled` when Durapay disabled
    # one of your endpoints (it is not delivered: that endpoint no longer listens).
    type: str = one_of(EVENT_TYPES)
    created_at: Timestamp
    sequence: int = Field(
        description=(
            "Increases with every event recorded, in the order the changes were committed, and "
            "strictly across one payment's events. Webhook deliveries may arrive out of order "
            "(retries, several workers): apply an event to a payment only if its `sequence` is "
            "higher than the last one you applied for that payment."
        )
    )
    intent_sequence: int | None = Field(
        description=(
            "1, 2, 3, … over one payment's events, without gaps: its story in order. `null` only "
            "for an event about no payment."
        )
    )
    data: dict[str, Any] = Field(
        description=(
            "The payment after the change (`paymentId`, `currency`, `status`, `amountInCents`, "
            "`amountCapturable`, `amountReceived`, `amountRefunded`, `transactionId`), the "
            "payment before it (`previous`: the same amounts and status, `null` for "
            "`payment.created`) and the transaction it concerns (`transaction`: `id`, `type`, "
            "`status`, `amountInCents`, or `null`)."
        )
    )
