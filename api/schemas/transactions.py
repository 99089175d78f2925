from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from api.schemas.base import ApiModel, RequestModel, Timestamp


class CardIn(RequestModel):
    number: str = Field(min_length=1, max_length=32)
    exp_month: int
    exp_year: int
    cvc: str = Field(min_length=1, max_length=8)

    @field_validator("number")
    @classmethod
    def _strip_spaces(cls, value: str) -> str:
        return value.replace(" ", "")


class TransactionCreate(RequestModel):
    type: Literal["charge"]
    card: CardIn


class CardOut(ApiModel):
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class TransactionOut(ApiModel):
    id: str
    object: str = "transaction"
    payment_intent_id: str
    type: str
    amount_in_cents: int
    currency: str
    status: str
    network_reference: str
    card: CardOut | None
    failure_code: str | None
    decline_code: str | None
    reconciled: bool
    created_at: Timestamp
    updated_at: Timestamp
