"""api/routers/transactions.py: the charge, up to the Update it sends (no worker runs here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from temporalio import workflow
from temporalio.client import Client

from core.domain import IntentStatus, RecordedTransaction, transaction_id_for
from core.settings import Settings
from tests.api.conftest import (
    CARD_4242,
    Merchant,
    assert_eventually,
    count,
    idempotency_record,
    insert_intent,
    rows_of,
    served_by,
    statements_of,
    workflow_exists,
)
from workflows.payment_messages import ChargeResult

pytestmark = pytest.mark.api


TRANSACTION_FIELDS = {
    "id",
    "object",
    "paymentIntentId",
    "type",
    "amountInCents",
    "currency",
    "status",
    "networkReference",
    "card",
    "failureCode",
    "declineCode",
    "reconciled",
    "createdAt",
    "updatedAt",
}


def _charge(card: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return {"type": "charge", "card": {**CARD_4242, **(card or {})}, **overrides}


@workflow.defn(name="PaymentIntentWorkflow")
class AnsweringPaymentWorkflow:
    """Stands in for the payment's workflow, answering a charge as the real one reports what it
    recorded (nothing is recorded, no network is called): card …4242 approved, others
    declined."""

    @workflow.run
    async def run(self, _: Any) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update
    async def confirm_charge(self, charge: dict[str, Any]) -> ChargeResult:
        update = workflow.current_update_info()
        assert update is not None
        approved = charge["card"]["last4"] == "4242"
        now = workflow.now().timestamp()
        return ChargeResult(
            intent_status=IntentStatus.SUCCEEDED if approved else IntentStatus.FAILED,
            transaction=RecordedTransaction(
                id=transaction_id_for(workflow.info().workflow_id, update.id),
                type="charge",
                status="succeeded" if approved else "failed",
                amount_in_cents=2499,
                decline_code=None if approved else "generic_decline",
                created_at=now,
                updated_at=now,
            ),
        )


async def test_an_approved_charge_is_200_with_its_transaction_and_replays_as_sent(
    settings: Settings, merchant: Merchant
) -> None:
    async with served_by(AnsweringPaymentWorkflow, settings, merchant) as shop:
        intent = await shop.create_intent()
        path = f"/payment-intents/{intent['id']}/transactions"
        first = await shop.post(path, _charge(), idempotency_key="order-1")
        assert first.status_code == 200, first.text
        txn = first.json()
        assert set(txn) == TRANSACTION_FIELDS
        assert txn["id"] == transaction_id_for(intent["id"], "charge:order-1")
        assert txn == {
            **txn,
            "object": "transaction",
            "paymentIntentId": intent["id"],
            "type": "charge",
            "amountInCents": 2499,
            "currency": "usd",
            "status": "succeeded",
            "networkReference": txn["id"],
            "failureCode": None,
            "declineCode": None,
            "reconciled": False,
            "card": {"brand": "visa", "last4": "4242", "expMonth": 12, "expYear": 2030},
        }
        assert txn["createdAt"].endswith("Z")
        again = await shop.post(path, _charge(), idempotency_key="order-1")
        assert (again.status_code, again.content) == (200, first.content)


async def test_an_answered_charge_is_seven_statements_its_answer_stored_by_one(
    settings: Settings, merchant: Merchant
) -> None:
    async with served_by(AnsweringPaymentWorkflow, settings, merchant) as shop:
        intent = await shop.create_intent()
        # The in-process app behind the test client (httpx types the transport in general).
        app = shop.http._transport.app  # type: ignore[attr-defined]
        with statements_of(app) as sent:
            answered = await shop.post(
                f"/payment-intents/{intent['id']}/transactions",
                _charge(),
                idempotency_key="order-stored",
            )
        assert answered.status_code == 200, answered.text
    # The claim and the token commit before the Update; after it, the stored answer is one
    # autocommit UPDATE: nothing else of the request is left to commit with it.
    assert _summaries(sent) == [
        "AUTHENTICATE",
        "BEGIN",
        "SELECT payment_intent",
        "INSERT idempotency_record",
        "INSERT card_token",
        "COMMIT",
        "UPDATE idempotency_record",
    ]


async def test_a_declined_charge_is_402_with_its_transaction_and_replays_as_sent(
    settings: Settings, merchant: Merchant
) -> None:
    declined_card = {"number": "4000000000000002"}
    async with served_by(AnsweringPaymentWorkflow, settings, merchant) as shop:
        intent = await shop.create_intent()
        path = f"/payment-intents/{intent['id']}/transactions"
        first = await shop.post(path, _charge(declined_card), idempotency_key="order-2")
        assert first.status_code == 402, first.text
        error = first.json()["error"]
        assert (error["type"], error["code"], error["declineCode"]) == (
            "card_error",
            "card_declined",
            "generic_decline",
        )
        assert set(error["transaction"]) == TRANSACTION_FIELDS
        assert error["transaction"]["status"] == "failed"
        assert error["transaction"]["card"]["last4"] == "0002"
        again = await shop.post(path, _charge(declined_card), idempotency_key="order-2")
        assert (again.status_code, again.content) == (402, first.content)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (_charge({"number": "4242424242424241"}), "invalid_number", "card.number"),
        (_charge({"number": "4242"}), "invalid_number", "card.number"),
        (_charge({"expMonth": 13}), "invalid_expiry_month", "card.expMonth"),
        (_charge({"expYear": 2001}), "expired_card", "card.expYear"),
        (_charge({"cvc": "12"}), "invalid_cvc", "card.cvc"),
        # Only ASCII digits are digits: each of these passes Luhn if read as its ASCII digit.
        (_charge({"number": "\u0664242424242424242"}), "invalid_number", "card.number"),
        (_charge({"number": "424242424242424\u00b2"}), "invalid_number", "card.number"),
        (_charge({"cvc": "\u0661\u0662\u0663"}), "invalid_cvc", "card.cvc"),
        (_charge({"expMonth": "\u0661\u0662"}), "parameter_invalid", "card.expMonth"),
        ({"type": "charge"}, "parameter_missing", "card"),
        ({"type": "refund", "card": CARD_4242}, "parameter_invalid", "type"),
        (_charge(bogus=1), "parameter_unknown", "bogus"),
    ],
)
async def test_a_refused_card_is_400_and_stores_and_claims_nothing(
    merchant: Merchant,
    db: asyncpg.Pool,
    temporal: Client,
    body: dict[str, Any],
    code: str,
    param: str,
) -> None:
    intent = await merchant.create_intent()
    before = await rows_of(db, merchant)
    response = await merchant.post(
        f"/payment-intents/{intent['id']}/transactions", body, idempotency_key="charge-1"
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert "4242" not in response.text  # no card data in an error
    assert await rows_of(db, merchant) == before  # no token, no claim
    assert not await workflow_exists(temporal, intent["id"])


async def test_a_charge_on_a_canceled_intent_is_409_without_temporal(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client
) -> None:
    intent_id = await insert_intent(db, merchant, status="canceled")
    before = await rows_of(db, merchant)
    response = await merchant.post(
        f"/payment-intents/{intent_id}/transactions", _charge(), idempotency_key="too-late"
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert await rows_of(db, merchant) == before  # no token, and the 409 released its claim
    assert not await workflow_exists(temporal, intent_id)


async def test_a_charge_retried_after_its_answer_was_lost_gets_its_own_outcome(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client
) -> None:
    """The first request answered 503 (Temporal had not confirmed its Update in time), but the
    Update ran, the charge succeeded and the payment's run closed. The retry with the same
    Idempotency-Key gets that charge, not a 409 for the intent it moved to `succeeded`; a
    request with another key still gets the 409."""
    intent_id = await insert_intent(db, merchant, status="succeeded", amount_received=2499)
    charged = transaction_id_for(intent_id, "charge:answer-lost")
    await db.execute(
        "INSERT INTO transaction (id, merchant_id, payment_intent_id, type, amount_in_cents, "
        "currency, status, network_reference, card_brand, card_last4, card_exp_month, "
        "card_exp_year, reconciled) VALUES ($1, $2, $3, 'charge', 2499, 'usd', 'succeeded', "
        "$1, 'visa', '4242', 12, 2030, false)",
        charged,
        merchant.id,
        intent_id,
    )
    before = await rows_of(db, merchant)
    response = await merchant.post(
        f"/payment-intents/{intent_id}/transactions", _charge(), idempotency_key="answer-lost"
    )
    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["status"]) == (charged, "succeeded")
    other = await merchant.post(
        f"/payment-intents/{intent_id}/transactions", _charge(), idempotency_key="another-charge"
    )
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert await count(db, "card_token", merchant) == before.get("card_token", 0)
    assert not await workflow_exists(temporal, intent_id)


async def test_a_charge_on_another_merchants_intent_is_404(
    merchant: Merchant, other_merchant: Merchant, db: asyncpg.Pool
) -> None:
    theirs = await other_merchant.create_intent()
    response = await merchant.post(
        f"/payment-intents/{theirs['id']}/transactions", _charge(), idempotency_key="not-mine"
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert set((await rows_of(db, merchant)).values()) == {0}  # nothing at all


@pytest.fixture
def statements(app: FastAPI) -> Iterator[list[str]]:
    """Every transaction boundary and statement the app sends to Postgres, in order."""
    with statements_of(app) as sent:
        yield sent


def _summaries(sent: list[str]) -> list[str]:
    """`BEGIN`, `SELECT payment_intent`, …"""
    return [_summary(query) for query in sent]


def _summary(sql: str) -> str:
    """`SELECT merchant`, `INSERT card_token`: the verb and the (first) table; `AUTHENTICATE`
    for authentication's one statement (api/authentication.py)."""
    words = sql.replace(";", "").split()
    if words[:2] == ["WITH", "signing_key"]:
        return "AUTHENTICATE"
    for marker in ("INTO", "FROM", "UPDATE"):
        if marker in words:
            return f"{words[0]} {words[words.index(marker) + 1]}"
    return words[0]


async def test_a_charge_commits_once_before_its_update_and_holds_its_key_meanwhile(
    merchant: Merchant, db: asyncpg.Pool, statements: list[str]
) -> None:
    """After authentication, the claim of the Idempotency-Key and the vault token commit in
    one transaction, before the Update. No worker accepts the Update, so the request waits
    (that is when we look), then answers 503, which releases the key but keeps the token."""
    intent = await merchant.create_intent()
    statements.clear()
    path = f"/payment-intents/{intent['id']}/transactions"
    first = asyncio.create_task(merchant.post(path, _charge(), idempotency_key="charge-9"))
    # The claim and the token are visible together, while the Update is in flight.
    await assert_eventually(lambda: idempotency_record(db, merchant, "charge-9"))
    assert await count(db, "card_token", merchant) == 1
    before_update = _summaries(statements)
    # Authentication first, one autocommit statement; then one transaction, nothing else.
    assert before_update == [
        "AUTHENTICATE",
        "BEGIN",
        "SELECT payment_intent",
        "INSERT idempotency_record",
        "INSERT card_token",
        "COMMIT",
    ]
    second = await merchant.post(path, _charge(), idempotency_key="charge-9")
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "idempotency_key_in_use"
    assert not first.done()
    answered = await first
    assert answered.status_code == 503, answered.text
    assert await idempotency_record(db, merchant, "charge-9") is None
    assert await count(db, "card_token", merchant) == 1


async def test_a_charge_without_a_key_commits_only_its_token_before_the_update(
    merchant: Merchant, db: asyncpg.Pool, statements: list[str]
) -> None:
    intent = await merchant.create_intent()
    statements.clear()
    answered = asyncio.create_task(
        merchant.post(f"/payment-intents/{intent['id']}/transactions", _charge())
    )
    await assert_eventually(lambda: count(db, "card_token", merchant))
    before_update = _summaries(statements)
    assert before_update == [
        "AUTHENTICATE",
        "BEGIN",
        "SELECT payment_intent",
        "INSERT card_token",
        "COMMIT",
    ]
    assert (await answered).status_code == 503
    assert await count(db, "idempotency_record", merchant) == 0
