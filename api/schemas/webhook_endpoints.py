"""Webhook endpoints and their deliveries, as merchants see them."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.json_schema import JsonDict

from api.schemas.base import ApiModel, RequestModel, Timestamp, examples, one_of
from core.webhooks import ALL_EVENTS, PAYMENT_EVENT_TYPES

MAX_GRACE_SECONDS = 7 * 24 * 3600
# What `_known_events` accepts, shown in the schema.
ENABLED_EVENTS_ITEMS: JsonDict = {"enum": [ALL_EVENTS, *PAYMENT_EVENT_TYPES]}
ENDPOINT_EXAMPLE = {
    "id": "we_9d2f0b7c41e5a83c6b0e1f24",
    "object": "webhook_endpoint",
    "url": "https://shop.example/webhooks/durapay",
    "description": "Order fulfilment",
    "enabledEvents": ["payment.succeeded", "payment.failed"],
    "status": "enabled",
    "disabledReason": None,
    "createdAt": "2026-11-25T09:02:11.004Z",
    "updatedAt": "2026-11-25T09:02:11.004Z",
}
SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqXsF1nUcxbZtWaB7P3rQh2Lk4vYn0dJ6s="


def _known_events(value: list[str]) -> list[str]:
    unknown = [v for v in value if v != ALL_EVENTS and v not in PAYMENT_EVENT_TYPES]
    if unknown:
        raise ValueError(
            f"unknown event type '{unknown[0]}'; use '*' or one of {', '.join(PAYMENT_EVENT_TYPES)}"
        )
    return list(dict.fromkeys(value))  # keep the order, drop repeats


class WebhookEndpointCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra=examples(
            {
                "url": "https://shop.example/webhooks/durapay",
                "enabledEvents": ["payment.succeeded", "payment.failed"],
                "description": "Order fulfilment",
            }
        )
    )

    url: str = Field(min_length=1, max_length=2048)
    enabled_events: list[str] = Field(
        min_length=1, max_length=20, json_schema_extra={"items": ENABLED_EVENTS_ITEMS}
    )
    description: str | None = Field(default=None, max_length=500)

    @field_validator("enabled_events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return _known_events(value)


class WebhookEndpointUpdate(RequestModel):
    model_config = ConfigDict(json_schema_extra=examples({"status": "disabled"}))

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
    model_config = ConfigDict(json_schema_extra=examples({"gracePeriodSeconds": 86400}))

    # The old secret keeps signing (a second `v1,` signature) this long; default from config.
    grace_period_seconds: int | None = Field(default=None, ge=0, le=MAX_GRACE_SECONDS)


class WebhookEndpointOut(ApiModel):
    model_config = ConfigDict(json_schema_extra=examples(ENDPOINT_EXAMPLE))

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    description: str | None
    enabled_events: list[str]
    status: str = one_of(("enabled", "disabled"))
    # `gone` (answered 410), `failing` (3 days of failures) or `merchant`; null when enabled.
    disabled_reason: str | None = one_of(("gone", "failing", "merchant"), nullable=True)
    created_at: Timestamp
    updated_at: Timestamp


class WebhookEndpointWithSecret(WebhookEndpointOut):
    """Only in the answers to create and rotate: the secret is never shown again."""

    model_config = ConfigDict(
        json_schema_extra=examples({**ENDPOINT_EXAMPLE, "secret": SECRET_EXAMPLE})
    )

    secret: str


class WebhookEndpointDeleted(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=examples(
            {"id": ENDPOINT_EXAMPLE["id"], "object": "webhook_endpoint", "deleted": True}
        )
    )

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: Literal[True] = True


class DeliveryAttemptOut(ApiModel):
    attempt_number: int
    attempted_at: Timestamp
    status_code: int | None
    error: str | None
    duration_ms: int
    response_body: str | None


class WebhookDeliveryOut(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=examples(
            {
                "id": "whd_4c8e1a0f7b2d93e5a6c0b1f8",
                "object": "webhook_delivery",
                "eventId": "evt_5b0d7e2c94a1f83e6c2d0a19",
                "eventType": "payment.succeeded",
                "endpointId": ENDPOINT_EXAMPLE["id"],
                "origin": "event",
                "status": "succeeded",
                "attemptCount": 2,
                "createdAt": "2026-11-25T10:15:31.900Z",
                "updatedAt": "2026-11-25T10:15:37.215Z",
                "attempts": [
                    {
                        "attemptNumber": 1,
                        "attemptedAt": "2026-11-25T10:15:32.010Z",
                        "statusCode": 503,
                        "error": None,
                        "durationMs": 41,
                        "responseBody": "Service Unavailable",
                    },
                    {
                        "attemptNumber": 2,
                        "attemptedAt": "2026-11-25T10:15:37.102Z",
                        "statusCode": 200,
                        "error": None,
                        "durationMs": 113,
                        "responseBody": "ok",
                    },
                ],
            }
        )
    )

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    endpoint_id: str
    # `event` (planned when the event happened) or `redeliver`.
    origin: str = one_of(("event", "redeliver"))
    status: Literal["pending", "succeeded", "failed", "canceled"]
    attempt_count: int
    created_at: Timestamp
    updated_at: Timestamp
    attempts: list[DeliveryAttemptOut]


class RedeliverRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra=examples({"endpointId": ENDPOINT_EXAMPLE["id"]}))

    endpoint_id: str | None = None
