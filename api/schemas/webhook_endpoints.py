"""Webhook endpoints and their deliveries, as merchants see them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from api.schemas.base import ApiModel, RequestModel, Timestamp
from core.webhooks import ALL_EVENTS, PAYMENT_EVENT_TYPES

MAX_GRACE_SECONDS = 7 * 24 * 3600


def _known_events(value: list[str]) -> list[str]:
    unknown = [v for v in value if v != ALL_EVENTS and v not in PAYMENT_EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type '{unknown[0]}'; use '*' or one of "
                         f"{', '.join(PAYMENT_EVENT_TYPES)}")
    return list(dict.fromkeys(value))  # keep the order, drop repeats


class WebhookEndpointCreate(RequestModel):
    url: str = Field(min_length=1, max_length=2048)
    enabled_events: list[str] = Field(min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=500)

    @field_validator("enabled_events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return _known_events(value)


class WebhookEndpointUpdate(RequestModel):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    enabled_events: list[str] | None = Field(default=None, min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=500)
    # `disabled` stops deliveries (pending ones are canceled); `enabled` resumes them.
    status: Literal["enabled", "disabled"] | None = None

    @field_validator("enabled_events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _known_events(value)


class SecretRotation(RequestModel):
    # The old secret keeps signing (a second `v1,` signature) this long; default from config.
    grace_period_seconds: int | None = Field(default=None, ge=0, le=MAX_GRACE_SECONDS)


class WebhookEndpointOut(ApiModel):
    id: str
    object: str = "webhook_endpoint"
    url: str
    description: str | None
    enabled_events: list[str]
    status: str
    # `gone` (answered 410), `failing` (3 days of failures) or `merchant`; null when enabled.
    disabled_reason: str | None
    created_at: Timestamp
    updated_at: Timestamp


class WebhookEndpointWithSecret(WebhookEndpointOut):
    """Only in the answers to create and rotate: the secret is never shown again."""

    secret: str


class WebhookEndpointDeleted(ApiModel):
    id: str
    object: str = "webhook_endpoint"
    deleted: bool = True


class DeliveryAttemptOut(ApiModel):
    attempt_number: int
    attempted_at: Timestamp
    status_code: int | None
    error: str | None
    duration_ms: int
    response_body: str | None


class WebhookDeliveryOut(ApiModel):
    id: str
    object: str = "webhook_delivery"
    event_id: str
    event_type: str
    endpoint_id: str
    # `event` (planned when the event happened) or `redeliver`.
    origin: str
    status: Literal["pending", "succeeded", "failed", "canceled"]
    attempt_count: int
    created_at: Timestamp
    updated_at: Timestamp
    attempts: list[DeliveryAttemptOut]


class RedeliverRequest(RequestModel):
    endpoint_id: str | None = None
