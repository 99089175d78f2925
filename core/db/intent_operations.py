"""What the API's operations on an existing intent (charge, capture, cancel, refund) read and
write before they reach the intent's workflow, in plain SQL on the request's connection: the
merchant's intent, and a charge's vault token. Every charge runs both, so no statement is
built, compiled or cache-keyed per call and no table model is built from a row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

# Scoped to the merchant: another merchant's intent is no row at all.
_OWNED_INTENT = """
SELECT merchant_id, amount_in_cents, currency, capture_method, status, amount_received,
       amount_refunded
FROM payment_intent WHERE id = $1::text AND merchant_id = $2::text
"""
_INSERT_CARD_TOKEN = """
INSERT INTO card_token (id, merchant_id, pan_ciphertext, brand, last4, exp_month, exp_year)
VALUES ($1::text, $2::text, $3::bytea, $4::text, $5::text, $6::integer, $7::integer)
"""


@dataclass(frozen=True, slots=True)
class IntentSnapshot:
    """An intent as committed when the request read it: the columns an operation on it needs
    (the workflow's input, the status the state machine asks about, what is left to refund)."""

    id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    capture_method: str
    status: str
    amount_received: int
    amount_refunded: int


async def read_owned_intent(
    connection: AsyncConnection, intent_id: str, merchant_id: str
) -> IntentSnapshot | None:
    """The merchant's intent, None if it has none of that id."""
    # exec_driver_sql() is typed as answering one column; this statement answers seven.
    row: Row[*tuple[Any, ...]] | None = (
        await connection.exec_driver_sql(_OWNED_INTENT, (intent_id, merchant_id))
    ).first()
    if row is None:
        return None
    return IntentSnapshot(intent_id, *row)


async def insert_card_token(
    connection: AsyncConnection,
    *,
    token_id: str,
    merchant_id: str,
    pan_ciphertext: bytes,
    brand: str,
    last4: str,
    exp_month: int,
    exp_year: int,
) -> None:
    """The vault's row of a card: its number only as `pan_ciphertext` (core/db/vault.py
    deletes that once no authorization can need it)."""
    await connection.exec_driver_sql(
        _INSERT_CARD_TOKEN,
        (token_id, merchant_id, pan_ciphertext, brand, last4, exp_month, exp_year),
    )
