from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from api.schemas.base import ApiModel, RequestModel, Timestamp
from core.cards import card_brand


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

    def idempotency_parameters(self) -> dict[str, Any]:
        """The card as the answer shows it (brand, last4, expiry), which the stored answer and
        the vault hold in clear anyway: never the CVC, nor anything else of the number. A keyed
        hash over 3 or 4 digits is recovered in 10^4 guesses by whoever has the key and the
        database. A retry with another CVC is the same request (its answer is replayed); one
        with a card that shows differently is `idempotency_key_reused`."""
        card = CardOut(brand=card_brand(self.card.number), last4=self.card.number[-4:],
                       exp_month=self.card.exp_month, exp_year=self.card.exp_year)
        return {"type": self.type, "card": card.model_dump(mode="json", by_alias=True)}


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
