"""Card numbers leave the vault once no authorization can need them: with the charge's definite
outcome (approved or declined), never while the outcome is unknown; brand, last4 and expiry
stay for display."""

from __future__ import annotations

from typing import Any

import asyncpg

from client import DurapayClient
from tests.integration.conftest import CARD_4242, card, create_intent
from tests.integration.helpers import charge, settled_intent

TOKEN_OF = """SELECT t.status, c.pan_ciphertext IS NOT NULL AS held, c.pan_deleted_at,
                     c.brand, c.last4, c.exp_month, c.exp_year
              FROM transaction t JOIN card_token c ON c.id = t.card_token_id
              WHERE t.id = $1"""


async def _token_of(db: asyncpg.Pool, transaction_id: str) -> dict[str, Any]:
    row = await db.fetchrow(TOKEN_OF, transaction_id)
    assert row is not None
    return dict(row)


async def test_a_card_number_is_deleted_with_its_charges_definite_outcome(
    durapay: DurapayClient, db: asyncpg.Pool
) -> None:
    for number, status_code, status in (
        ("4242424242424242", 200, "succeeded"),
        ("4000000000000002", 402, "failed"),
    ):
        intent = await create_intent(durapay)
        response = await charge(durapay, intent["id"], card(number))
        assert response.status_code == status_code, response.text
        body = response.json()
        txn = body["error"]["transaction"] if status_code == 402 else body
        token = await _token_of(db, txn["id"])
        assert (token["status"], token["held"]) == (status, False), number
        assert token["pan_deleted_at"] is not None
        assert (token["brand"], token["last4"], token["exp_month"], token["exp_year"]) == (
            "visa",
            number[-4:],
            CARD_4242["expMonth"],
            CARD_4242["expYear"],
        )


async def test_a_card_number_is_kept_while_its_outcome_is_unknown(
    durapay: DurapayClient, db: asyncpg.Pool
) -> None:
    # Held past the adapter's timeout, then "pending" to the first status queries: unknown for
    # several seconds after the 202, then approved by reconciliation.
    intent = await create_intent(durapay)
    response = await charge(durapay, intent["id"], card("4000000000001059"))
    assert response.status_code == 202, response.text
    txn = response.json()
    token = await _token_of(db, txn["id"])  # status and card read together
    assert (token["status"], token["held"]) == ("timeout", True)
    assert token["pan_deleted_at"] is None

    settled = await settled_intent(durapay, intent["id"], timeout=60)
    assert settled["status"] == "succeeded"
    token = await _token_of(db, txn["id"])
    assert (token["status"], token["held"]) == ("succeeded", False)
