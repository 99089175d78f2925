"""Wire models: the JSON bodies of the HTTP API (camelCase on the wire)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from pydantic.alias_generators import to_camel


class OperationType(StrEnum):
    CHARGE = "charge"
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    # Takes back an authorize/charge whose answer the caller lost, by its reference: voids it,
    # or leaves a tombstone that declines it should it arrive later. Listed as `void` in /ledger.
    REVERSAL = "reversal"


# Operations that move money on a card; the others act on an earlier operation (the parent).
PRIMARY_TYPES = frozenset({OperationType.CHARGE, OperationType.AUTHORIZE})


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class CardIn(_Wire):
    number: Annotated[str, Field(pattern=r"^[0-9]{12,19}$")]
    exp_month: Annotated[StrictInt, Field(ge=1, le=12)]
    exp_year: Annotated[StrictInt, Field(ge=1000, le=9999)]
    cvc: Annotated[str, Field(pattern=r"^[0-9]{3,4}$")] | None = None


class OperationIn(_Wire):
    """Body of POST /v1/operations."""

    reference: Annotated[str, Field(min_length=1, max_length=100)]
    type: OperationType
    # StrictInt so "100" or 100.5 is rejected rather than silently coerced.
    amount_in_cents: Annotated[StrictInt, Field(gt=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]
    card: CardIn | None = None
    parent_reference: Annotated[str, Field(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _card_xor_parent(self) -> OperationIn:
        if self.type in PRIMARY_TYPES:
            if self.card is None:
                raise ValueError(f"card is required for {self.type.value}")
            if self.parent_reference is not None:
                raise ValueError(f"parentReference is not allowed for {self.type.value}")
        else:
            if self.parent_reference is None:
                raise ValueError(f"parentReference is required for {self.type.value}")
            if self.card is not None:
                raise ValueError(f"card is not allowed for {self.type.value}")
            if self.parent_reference == self.reference:
                raise ValueError("parentReference must differ from reference")
        return self


class OperationOut(_Wire):
    """A decided operation, as answered by POST /v1/operations."""

    reference: str
    type: OperationType
    status: Literal["approved", "declined", "pending"]
    decline_code: str | None
    amount_in_cents: int
    currency: str
    brand: str | None
    parent_reference: str | None
    created_at: str


class OperationStatusOut(_Wire):
    """Answer of GET /v1/operations/{reference}: one shape whatever the status."""

    reference: str
    status: Literal["approved", "declined", "pending", "not_found"]
    type: OperationType | None = None
    decline_code: str | None = None
    amount_in_cents: int | None = None
    currency: str | None = None
    brand: str | None = None
    parent_reference: str | None = None
    created_at: str | None = None


class LedgerEntryOut(_Wire):
    reference: str
    # Never `reversal`: the ledger lists a reversal as the `void` it is for the money.
    type: OperationType
    status: Literal["approved", "declined"]
    decline_code: str | None
    amount_in_cents: int
    currency: str
    brand: str | None
    parent_reference: str | None
    created_at: str
    committed_at: str


class LedgerOut(BaseModel):
    data: list[LedgerEntryOut]
