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
from core.cards import card_brand
from core.domain import TransactionStatus, TransactionType

CARD_EXAMPLE: JsonDict = {"brand": "visa", "last4": "4242", "expMonth": 12, "expYear": 2030}
TRANSACTION_EXAMPLE: JsonDict = {
    "id": "txn_8e41c09b2d7a5f36c1e0a947",
    "object": "transaction",
    "paymentIntentId": "pi_3f9c2a7e51b04d8e6a1c0b27",
    "type": "charge",
    "amountInCents": 2499,
    "currency": "usd",
    "status": "succeeded",
    "networkReference": "txn_8e41c09b2d7a5f36c1e0a947",
    "card": CARD_EXAMPLE,
    "failureCode": None,
    "declineCode": None,
    "reconciled": False,
    "createdAt": "2026-11-25T10:15:30.120Z",
    "updatedAt": "2026-11-25T10:15:31.870Z",
}


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
    model_config = ConfigDict(
        json_schema_extra=examples(
            {
                "type": "charge",
                "card": {
                    "number": "4242424242424242",
                    "expMonth": 12,
                    "expYear": 2030,
                    "cvc": "123",
                },
            }
        )
    )

    type: Literal["charge"]
    card: CardIn

    def idempotency_parameters(self) -> dict[str, Any]:
        """The card as the answer shows it (brand, last4, expiry), which the stored answer and
        the vault hold in clear anyway: never the CVC, nor anything else of the number. A keyed
        hash over 3 or 4 digits is recovered in 10^4 guesses by whoever has the key and the
        database. A retry with another CVC is the same request (its answer is replayed); one
        with a card that shows differently is `idempotency_key_reused`."""
        card = CardOut(
            brand=card_brand(self.card.number),
            last4=self.card.number[-4:],
            exp_month=self.card.exp_month,
            exp_year=self.card.exp_year,
        )
        return {"type": self.type, "card": card.model_dump(mode="json", by_alias=True)}


class CardOut(ApiModel):
    model_config = ConfigDict(json_schema_extra=examples(CARD_EXAMPLE))

    brand: str = one_of(("visa", "mastercard", "amex", "discover", "unknown"))
    last4: str
    exp_month: int
    exp_year: int


class TransactionOut(ApiModel):
    model_config = ConfigDict(json_schema_extra=examples(TRANSACTION_EXAMPLE))

    id: str
    object: Literal["transaction"] = "transaction"
    payment_intent_id: str
    type: str = one_of(TransactionType)
    amount_in_cents: int
    currency: str = answered_currency()
    # `timeout`: the outcome is not known yet; reconciliation settles it (`reconciled: true`).
    status: str = one_of(TransactionStatus)
    network_reference: str
    card: CardOut | None
    failure_code: str | None
    decline_code: str | None
    reconciled: bool
    created_at: Timestamp
    updated_at: Timestamp
