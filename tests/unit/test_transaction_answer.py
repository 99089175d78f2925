"""The API's answer built from the workflow's report of a transaction (no second read)."""

from __future__ import annotations

from datetime import UTC, datetime

from api.payment_workflow import as_recorded, pending_transaction
from core.db.intent_operations import IntentSnapshot
from core.domain import RecordedTransaction, TransactionType

INTENT = IntentSnapshot(
    id="pi_1",
    merchant_id="mer_1",
    amount_in_cents=2499,
    currency="usd",
    capture_method="automatic",
    status="processing",
    amount_received=0,
    amount_refunded=0,
)


def test_a_recorded_transaction_answers_with_the_database_times() -> None:
    pending = pending_transaction("txn_1", INTENT, TransactionType.CHARGE, 2499)
    txn = as_recorded(
        pending,
        RecordedTransaction(
            "txn_1",
            "charge",
            "succeeded",
            2499,
            created_at=1_800_000_000.0,
            updated_at=1_800_000_001.5,
        ),
    )
    assert (txn.status, txn.id, txn.amount_in_cents) == ("succeeded", "txn_1", 2499)
    assert txn.created_at == datetime.fromtimestamp(1_800_000_000.0, UTC)
    assert txn.updated_at == datetime.fromtimestamp(1_800_000_001.5, UTC)


def test_an_answer_not_recorded_keeps_the_pending_times() -> None:
    """The workflow reports `pending` without times when the database refused the answer:
    the merchant sees when the request was made, never 1970."""
    pending = pending_transaction("txn_2", INTENT, TransactionType.CHARGE, 2499)
    txn = as_recorded(pending, RecordedTransaction("txn_2", "charge", "pending", 2499))
    assert txn.status == "pending"
    assert (txn.created_at, txn.updated_at) == (pending.created_at, pending.updated_at)
