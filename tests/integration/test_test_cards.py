"""Every test card of docs/api.md end to end: the charge's HTTP status, the transaction's and the
intent's final state, the audit trail, and what the simulated network's ledger committed.

The timeout, lost-response and bad-day cards answer 202 and must reach the network's truth with
no client action: the test only polls GET /payment-intents/{id}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from client import DurapayClient
from tests.integration.conftest import card, create_intent
from tests.integration.helpers import charge, ledger_entries, settled_intent

SUCCEEDED_EVENTS = ["payment.created", "payment.processing", "payment.succeeded"]
FAILED_EVENTS = ["payment.created", "payment.processing", "payment.failed"]


@dataclass(frozen=True)
class CardCase:
    number: str
    http_status: int  # of the charge request: 200, 402 or 202
    approved: bool  # the final outcome
    brand: str = "visa"
    decline_code: str | None = None
    failure_code: str | None = None  # for failures that are not a decline
    reconciled: bool = False  # settled by status queries after an unknown answer
    charged_at_network: bool = True  # False: no ledger entry at all
    amount: int = 2499
    currency: str = "usd"
    cvc: str = "123"


CASES = [
    CardCase("4242424242424242", 200, True),
    CardCase("5555555555554444", 200, True, brand="mastercard", amount=1500, currency="eur"),
    CardCase("4000000000000002", 402, False, decline_code="generic_decline"),
    CardCase(
        "4000000000009995",
        402,
        False,
        decline_code="insufficient_funds",
        amount=700,
        currency="gbp",
    ),
    CardCase("4000000000000069", 402, False, decline_code="expired_card"),
    CardCase("4000000000000127", 402, False, decline_code="incorrect_cvc"),
    CardCase(
        "4000000000000119", 402, False, failure_code="processing_error", charged_at_network=False
    ),
    CardCase("4000000000001018", 202, True, reconciled=True, amount=500, currency="jpy"),
    CardCase("4000000000001026", 202, False, decline_code="generic_decline", reconciled=True),
    CardCase("4000000000001034", 202, True, reconciled=True, amount=1234, currency="cad"),
    CardCase("4000000000001042", 200, True),
    CardCase("4000000000001059", 202, True, reconciled=True, amount=999, currency="aud"),
    # The network's bad day: the money moved, the answer is wrong or late; reconciliation
    # learns the truth from status queries (…1091's status index lags: `not_found` first).
    CardCase("4000000000001067", 202, True, reconciled=True),
    CardCase("4000000000001075", 202, True, reconciled=True, amount=4200, currency="sek"),
    CardCase("4000000000001083", 202, True, reconciled=True),
    CardCase("4000000000001091", 202, True, reconciled=True, amount=777),
    # "Any other valid card number is approved (brand from its prefix)."
    CardCase("4111111111111111", 200, True),
    CardCase("2223003122003222", 200, True, brand="mastercard"),
    CardCase("378282246310005", 200, True, brand="amex", cvc="1234"),
    CardCase("6011111111111117", 200, True, brand="discover", amount=100, currency="chf"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.number for c in CASES])
async def test_charge_test_card_reaches_its_final_state(
    case: CardCase, durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await create_intent(durapay, amount=case.amount, currency=case.currency)
    response = await charge(durapay, intent["id"], card(case.number, cvc=case.cvc))

    assert response.status_code == case.http_status, response.text
    first = _transaction_of(response, case)
    assert case.number not in response.text
    assert first["card"] == {
        "brand": case.brand,
        "last4": case.number[-4:],
        "expMonth": 12,
        "expYear": 2030,
    }
    if case.http_status == 202:
        assert first["status"] == "timeout"
        assert first["reconciled"] is False

    # No client action beyond reading: reconciliation alone must settle the unknown outcomes.
    final = await settled_intent(durapay, intent["id"], timeout=45)
    assert final["status"] == ("succeeded" if case.approved else "failed"), final
    assert [t["id"] for t in final["transactions"]] == [first["id"]]
    txn = final["transactions"][0]
    assert txn == {
        **txn,
        "object": "transaction",
        "paymentIntentId": intent["id"],
        "type": "charge",
        "amountInCents": case.amount,
        "currency": case.currency,
        "status": "succeeded" if case.approved else "failed",
        "declineCode": case.decline_code,
        "reconciled": case.reconciled,
        "networkReference": first["networkReference"],
    }
    _assert_failure_code(txn, case)
    _assert_intent_amounts_and_error(final, case)

    events = (await durapay.get(f"/payment-intents/{intent['id']}/events")).json()["data"]
    assert [e["type"] for e in events] == (SUCCEEDED_EVENTS if case.approved else FAILED_EVENTS)
    assert [e["data"].get("transactionId") for e in events[1:]] == [txn["id"], txn["id"]]
    assert events[-1]["data"]["status"] == final["status"]

    ledger = await ledger_entries(cardnet, txn["networkReference"])
    if not case.charged_at_network:
        assert ledger == []
        return
    assert len(ledger) == 1, ledger
    assert ledger[0] == {
        **ledger[0],
        "reference": txn["networkReference"],
        "type": "charge",
        "status": "approved" if case.approved else "declined",
        "declineCode": case.decline_code,
        "amountInCents": case.amount,
        "currency": case.currency,
        "brand": case.brand,
    }


def _transaction_of(response: httpx.Response, case: CardCase) -> dict[str, Any]:
    """The Transaction of a charge answer: the body itself, or `error.transaction` on a 402."""
    body: dict[str, Any] = response.json()
    if case.http_status != 402:
        return body
    error = body["error"]
    assert error["type"] == "card_error"
    assert error["declineCode"] == case.decline_code
    assert error["code"] == ("card_declined" if case.decline_code else case.failure_code)
    txn: dict[str, Any] = error["transaction"]
    assert txn["status"] == "failed"
    assert txn["declineCode"] == case.decline_code
    return txn


def _assert_failure_code(txn: dict[str, Any], case: CardCase) -> None:
    if case.approved:
        assert txn["failureCode"] is None
    elif case.decline_code is not None:
        # The contract does not say what a decline puts in failureCode: null, or Stripe's
        # `card_declined`; never anything else.
        assert txn["failureCode"] in (None, "card_declined"), txn
    else:
        assert txn["failureCode"] == case.failure_code


def _assert_intent_amounts_and_error(intent: dict[str, Any], case: CardCase) -> None:
    if case.approved:
        assert intent["amountReceived"] == case.amount
        assert intent["lastError"] is None
        return
    assert intent["amountReceived"] == 0
    assert intent["lastError"]["type"] == "card_error"
    assert intent["lastError"]["declineCode"] == case.decline_code
