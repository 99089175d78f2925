from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from api.schemas.base import ApiModel, RequestModel, Timestamp
from api.schemas.transactions import TransactionOut
from core.domain import MAX_AMOUNT, MIN_AMOUNT, SUPPORTED_CURRENCIES


class PaymentIntentCreate(RequestModel):
    amount_in_cents: int = Field(ge=MIN_AMOUNT, le=MAX_AMOUNT, strict=True)
    currency: str
    description: str | None = Field(default=None, max_length=1000)
    capture_method: Literal["automatic", "manual"] = "automatic"
    metadata: dict[str, str] = Field(default_factory=dict, max_length=50)

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
    id: str
    object: str = "payment_intent"
    amount_in_cents: int
    currency: str
    description: str | None
    status: str
    capture_method: str
    amount_capturable: int
    amount_received: int
    amount_refunded: int
    last_error: dict[str, Any] | None
    # Set once canceled: `requested_by_customer`, `duplicate`, `fraudulent`, `abandoned`, or
    # `expired` (an authorization not captured in time). An addition to API.md's object.
    cancellation_reason: str | None = None
    metadata: dict[str, str]
    created_at: Timestamp
    updated_at: Timestamp
    transactions: list[TransactionOut]


class PaymentIntentCapture(RequestModel):
    # Omitted: everything authorized. Less: a partial capture; the rest is released.
    amount_in_cents: int | None = Field(default=None, ge=MIN_AMOUNT, le=MAX_AMOUNT, strict=True)


class PaymentIntentCancel(RequestModel):
    cancellation_reason: Literal["requested_by_customer", "duplicate", "fraudulent",
                                 "abandoned"] = "requested_by_customer"


class RefundCreate(RequestModel):
    # Omitted: everything captured and not refunded yet.
    amount_in_cents: int | None = Field(default=None, ge=MIN_AMOUNT, le=MAX_AMOUNT, strict=True)
