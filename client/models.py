"""Typed objects of the API, as docs/api.md shows them: camelCase on the wire, snake_case here.

Forward compatible: a field the API adds later is kept (`model_extra`, or as an attribute by
its wire name) rather than refused, and statuses and types are plain strings, so a new value
never breaks an older SDK.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class DurapayObject(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_dict(self) -> dict[str, Any]:
        """As the API sent it (camelCase)."""
        return self.model_dump(mode="json", by_alias=True)


class Card(DurapayObject):
    """The card as the API shows it: never the number or the CVC."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int


class Transaction(DurapayObject):
    """`type`: charge, capture, void, refund. `status`: pending, succeeded, failed, or timeout
    (outcome unknown: reconciliation settles it and sets `reconciled`)."""

    id: str
    object: str = "transaction"
    payment_intent_id: str
    type: str
    amount_in_cents: int
    currency: str
    status: str
    network_reference: str | None = None
    card: Card | None = None
    failure_code: str | None = None
    decline_code: str | None = None
    reconciled: bool = False
    created_at: datetime
    updated_at: datetime


class PaymentIntent(DurapayObject):
    """`status`: created, processing, requires_capture, succeeded, failed, canceled,
    partially_refunded, refunded."""

    id: str
    object: str = "payment_intent"
    amount_in_cents: int
    currency: str
    description: str | None = None
    status: str
    capture_method: str = "automatic"
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0
    last_error: dict[str, Any] | None = None
    cancellation_reason: str | None = None
    metadata: dict[str, str] = {}
    created_at: datetime
    updated_at: datetime
    transactions: list[Transaction] = []


class Event(DurapayObject):
    """One immutable state change. Deliveries may arrive out of order: apply an event to a
    payment only if its `sequence` is higher than the last one applied."""

    id: str
    object: str = "event"
    type: str
    created_at: datetime
    sequence: int | None = None
    data: dict[str, Any] = {}


class WebhookEndpoint(DurapayObject):
    """`secret` (`whsec_…`) is set only in the answers to create and rotate-secret."""

    id: str
    object: str = "webhook_endpoint"
    url: str
    description: str | None = None
    enabled_events: list[str]
    status: str
    disabled_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    secret: str | None = None


class DeletedWebhookEndpoint(DurapayObject):
    id: str
    object: str = "webhook_endpoint"
    deleted: bool = True


class DeliveryAttempt(DurapayObject):
    attempt_number: int
    attempted_at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: int
    response_body: str | None = None


class WebhookDelivery(DurapayObject):
    id: str
    object: str = "webhook_delivery"
    event_id: str
    event_type: str
    endpoint_id: str
    origin: str | None = None
    status: str
    attempt_count: int = 0
    created_at: datetime
    updated_at: datetime
    attempts: list[DeliveryAttempt] = []


Item = TypeVar("Item", bound=DurapayObject)


class Page(BaseModel, Generic[Item]):
    """One page of a list: `{"data": [...], "hasMore": bool}`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
    data: list[Item]
    has_more: bool = False
