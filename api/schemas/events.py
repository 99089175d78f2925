from __future__ import annotations

from typing import Any

from pydantic import Field

from api.schemas.base import ApiModel, Timestamp


class EventOut(ApiModel):
    id: str
    object: str = "event"
    type: str
    created_at: Timestamp
    sequence: int = Field(description=(
        "Increases with every event recorded, in the order the changes were committed, and "
        "strictly across one payment's events. Webhook deliveries may arrive out of order "
        "(retries, several workers): apply an event to a payment only if its `sequence` is "
        "higher than the last one you applied for that payment."))
    intent_sequence: int | None = Field(description=(
        "1, 2, 3, … over one payment's events, without gaps: its story in order. `null` only "
        "for an event about no payment."))
    data: dict[str, Any] = Field(description=(
        "The payment after the change (`paymentId`, `currency`, `status`, `amountInCents`, "
        "`amountCapturable`, `amountReceived`, `amountRefunded`, `transactionId`), the "
        "payment before it (`previous`: the same amounts and status, `null` for "
        "`payment.created`) and the transaction it concerns (`transaction`: `id`, `type`, "
        "`status`, `amountInCents`, or `null`)."))
