from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.json_schema import JsonDict

from api.schemas.base import (
    ApiModel,
    RequestModel,
    Timestamp,
    answered_currency,
    examples,
    one_of,
)
from api.schemas.transactions import TRANSACTION_EXAMPLE, TransactionOut
from core.domain import (
    MAX_AMOUNT,
    MIN_AMOUNT,
    SUPPORTED_CURRENCIES,
    CancellationReason,
    CaptureMethod,
    IntentStatus,
)

PAYMENT_INTENT_EXAMPLE: JsonDict = {
    "id": "pi_3f9c2a7e51b04d8e6a1c0b27",
    "object": "payment_intent",
    "amountInCents": 2499,
    "currency": "usd",
    "description": "Order#1234",
    "status": "succeeded",
    "captureMethod": "automatic",
    "amountCapturable": 0,
    "amountReceived": 2499,
    "amountRefunded": 0,
    "lastError": None,
    "cancellationReason": None,
    "metadata": {"orderId": "1234"},
    "createdAt": "2026-11-25T10:15:29.480Z",
    "updatedAt": "2026-11-25T10:15:31.870Z",
    "transactions": [TRANSACTION_EXAMPLE],
}


class PaymentIntentCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra=examples(
            {
                "amountInCents": 2499,
                "currency": "usd",
                "description": "Order#1234",
                "captureMethod": "automatic",
                "metadata": {"orderId": "1234"},
            }
        )
    )

    amount_in_cents: int = Field(ge=MIN_AMOUNT, le=MAX_AMOUNT, strict=True)
    currency: str = one_of(sorted(SUPPORTED_CURRENCIES))
    description: str | None = Field(default=None, max_length=1000)
    capture_method: Literal["automatic", "manual"] = "automatic"
    # The bounds `_metadata_bounds` enforces, shown in the schema.
    metadata: dict[str, str] = Field(
        default_factory=dict,
        max_length=50,
        json_schema_extra={
            "propertyNames": {"minLength": 1, "maxLength": 40},
            "additionalProperties": {"type": "string", "maxLength": 500},
        },
    )

    @field_validator("currency")
    @classmethod
    def _supported_currency(cls, value: str) -> str:
        if value not in SUPPORTED_CURRENCIES:
            raise ValueError(f"must be one of {', '.join(sorted(SUPPORTED_CURRENCIES))}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not 1 <= len(key) <= 40 or len(item) > 500:
                raise ValueError("keys are 1-40 characters and values at most 500")
        return value


class PaymentIntentOut(ApiModel):
    model_config = ConfigDict(json_schema_extra=examples(PAYMENT_INTENT_EXAMPLE))

    id: str
    object: Literal["payment_intent"] = "payment_intent"
    amount_in_cents: int
    currency: str = answered_currency()
    description: str | None
    status: str = one_of(IntentStatus)
    capture_method: str = one_of(CaptureMethod)
    amount_capturable: int
    amount_received: int
    amount_refunded: int
    last_error: dict[str, Any] | None
    # Set once canceled: `requested_by_customer`, `duplicate`, `fraudulent`, `abandoned`, or
    # `expired` (an authorization not captured in time).
    cancellation_reason: str | None = one_of(CancellationReason, nullable=True, default=None)
    metadata: dict[str, str]
    created_at: Timestamp
    updated_at: Timestamp
    transactions: list[TransactionOut]


class PaymentIntentCapture(RequestModel):
    model_config = ConfigDict(json_schema_extra=examples({"amountInCents": 1500}))

    # Omitted: everything authorized. Less: a partial capture; the rest is released.
    amount_in_cents: int | None = Field(default=None, ge=MIN_AMOUNT, le=MAX_AMOUNT, strict=True)


class PaymentIntentCancel(RequestModel):
    model_config = ConfigDict(
        json_schema_extra=examples({"cancellationReason": "requested_by_customer"})
    )

    cancellation_reason: Literal[
        "requested_by_customer", "duplicate", "fraudulent", "abandoned"
    ] = "requested_by_customer"


class RefundCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra=examples({"amountInCents": 500}))

    # Omitted: everything captured and not refunded yet.
    amount_in_cents: int | None = Field(default=None, ge=MIN_AMOUNT, le=MAX_AMOUNT, strict=True)
