"""Database tables. Only this module knows column names; API schemas are separate.

Money is `amount_in_cents BIGINT` plus `currency`; times are `timestamptz` in UTC. Card numbers
and merchant secrets exist here only as AES-GCM ciphertext.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, LargeBinary, MetaData, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# A fixed naming convention keeps Alembic's constraint names stable across environments.
SQLModel.metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created_at() -> Any:
    return Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )


def _timestamp(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


class Merchant(SQLModel, table=True):
    __tablename__ = "merchant"
    id: str = Field(primary_key=True)
    name: str
    created_at: datetime = _created_at()


class MerchantKey(SQLModel, table=True):
    __tablename__ = "merchant_key"
    public_key: str = Field(primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", index=True)
    secret_ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # A rolled key keeps working until `expires_at` (grace period), then is refused.
    expires_at: datetime | None = _timestamp(nullable=True)
    created_at: datetime = _created_at()


class RequestNonce(SQLModel, table=True):
    """Nonces seen per key inside the signature window; shared by every API process."""

    __tablename__ = "request_nonce"
    public_key: str = Field(primary_key=True)
    nonce: str = Field(primary_key=True)
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class CardToken(SQLModel, table=True):
    """The vault: the PAN encrypted, bound to its token id. The CVC is never stored."""

    __tablename__ = "card_token"
    id: str = Field(primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", index=True)
    pan_ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    created_at: datetime = _created_at()


class PaymentIntent(SQLModel, table=True):
    __tablename__ = "payment_intent"
    id: str = Field(primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", index=True)
    amount_in_cents: int = Field(sa_type=BigInteger)
    currency: str
    description: str | None = None
    capture_method: str
    status: str
    amount_capturable: int = Field(default=0, sa_type=BigInteger)
    amount_received: int = Field(default=0, sa_type=BigInteger)
    amount_refunded: int = Field(default=0, sa_type=BigInteger)
    last_error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    metadata_: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", JSONB, nullable=False)
    )
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class Transaction(SQLModel, table=True):
    __tablename__ = "transaction"
    id: str = Field(primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id")
    payment_intent_id: str = Field(foreign_key="payment_intent.id", index=True)
    type: str
    amount_in_cents: int = Field(sa_type=BigInteger)
    currency: str
    status: str
    # The idempotency key at the network: every retry of this operation reuses it.
    network_reference: str = Field(unique=True)
    card_token_id: str | None = Field(default=None, foreign_key="card_token.id")
    card_brand: str | None = None
    card_last4: str | None = None
    card_exp_month: int | None = None
    card_exp_year: int | None = None
    failure_code: str | None = None
    decline_code: str | None = None
    reconciled: bool = False
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class Event(SQLModel, table=True):
    """Append-only audit trail; a trigger refuses UPDATE and DELETE."""

    __tablename__ = "event"
    seq: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    id: str = Field(unique=True)
    merchant_id: str = Field(foreign_key="merchant.id")
    payment_intent_id: str | None = Field(default=None, foreign_key="payment_intent.id", index=True)
    transaction_id: str | None = None
    type: str
    data: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _created_at()


class IdempotencyRecord(SQLModel, table=True):
    """A merchant's Idempotency-Key: the request it named and the response it got."""

    __tablename__ = "idempotency_record"
    merchant_id: str = Field(primary_key=True, foreign_key="merchant.id")
    key: str = Field(primary_key=True)
    endpoint: str
    request_hash: str
    response_status: int | None = None
    response_body: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    created_at: datetime = _created_at()
