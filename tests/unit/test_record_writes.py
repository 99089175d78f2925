"""What an outcome writes, decided before any SQL: the state machine's moves, and only the
columns that change."""

from __future__ import annotations

from datetime import UTC, datetime

from activities.payment_moves import outcome_write
from activities.persistence import Outcome
from core.db.payment_records import IntentRow, LockedPayment, TransactionRow, write_statement
from core.domain import NetworkOutcome

NOW = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


def _locked(*, capture_method: str = "automatic", review_open: bool = False) -> LockedPayment:
    intent = IntentRow(
        id="pi_1",
        merchant_id="acct_1",
        amount_in_cents=1000,
        currency="usd",
        capture_method=capture_method,
        status="processing",
        amount_capturable=0,
        amount_received=0,
        amount_refunded=0,
        last_error=None,
        cancellation_reason=None,
        manual_review_since=NOW if review_open else None,
        manual_review_resolved_at=None,
    )
    txn = TransactionRow(
        id="txn_1",
        type="charge",
        status="pending",
        amount_in_cents=1000,
        card_token_id="tok_1",
        decline_code=None,
        failure_code=None,
        reconciled=False,
        created_at=NOW,
        updated_at=NOW,
    )
    return LockedPayment(
        intent=intent,
        transaction=txn,
        tail_seq=2,
        tail_hash="a" * 64,
        now=NOW,
        endpoints=[],
        fresh=True,
    )


def test_an_approved_charge_writes_only_what_changes() -> None:
    write = outcome_write(
        _locked(), Outcome("pi_1", "txn_1", NetworkOutcome.APPROVED), cause="txn_1:approved"
    )
    assert write.moved_transaction == (
        "txn_1",
        "pending",
        {"status": "succeeded", "updated_at": NOW},
    )
    assert write.moved_intent == (
        "pi_1",
        "processing",
        {"status": "succeeded", "amount_received": 1000, "updated_at": NOW},
    )
    assert write.event is not None and write.event["chain_seq"] == 3
    assert write.event["prev_hash"] == "a" * 64 and write.shredded_card_token == "tok_1"


def test_a_declined_charge_fails_the_attempt_and_resolves_an_open_review() -> None:
    locked = _locked(review_open=True)
    write = outcome_write(
        locked,
        Outcome(
            "pi_1",
            "txn_1",
            NetworkOutcome.DECLINED,
            decline_code="insufficient_funds",
            reconciled=True,
        ),
        cause="txn_1:declined",
    )
    assert write.moved_transaction is not None and write.moved_transaction[2] == {
        "status": "failed",
        "decline_code": "insufficient_funds",
        "reconciled": True,
        "updated_at": NOW,
    }
    assert write.moved_intent is not None
    assert set(write.moved_intent[2]) == {
        "status",
        "last_error",
        "updated_at",
        "manual_review_resolved_at",
    }
    assert not locked.intent.review_open


def test_an_unknown_answer_moves_only_the_transaction() -> None:
    write = outcome_write(
        _locked(), Outcome("pi_1", "txn_1", NetworkOutcome.UNKNOWN), cause="txn_1:unknown"
    )
    assert write.moved_transaction == ("txn_1", "pending", {"status": "timeout", "updated_at": NOW})
    assert (write.moved_intent, write.event, write.shredded_card_token) == (None, None, None)
    statement, values = write_statement(write)
    assert "payment_intent" not in statement and "event" not in statement
    assert values == ["timeout", NOW, "txn_1", "pending"]
