"""What a payment record writes, decided before any SQL is sent: the state machine's moves
for an outcome, the columns that change, and the event at the end of the payment's chain.
Pure functions over the rows the record read (core/db/payment_records.py)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.db.deliveries import planned_deliveries
from core.db.payment_records import IntentRow, LockedPayment, RecordWrite, TransactionRow
from core.db.queries import (
    chained_event_row,
    changed_columns,
    event_data,
    event_id_for,
    intent_state,
)
from core.domain import CaptureMethod, NetworkOutcome, TransactionStatus, TransactionType
from core.state_machine import (
    IntentAction,
    TransactionAction,
    move_intent,
    move_transaction,
    refund_action,
)

if TYPE_CHECKING:
    from activities.persistence import Outcome


def outcome_write(locked: LockedPayment, result: Outcome, *, cause: str) -> RecordWrite:
    """What an outcome writes, the state machine deciding each move; `locked`'s rows are set
    to what they hold after it. Only the columns that change are written."""
    intent, txn, now = locked.intent, locked.transaction, locked.now
    assert txn is not None
    if result.outcome is NetworkOutcome.UNKNOWN:
        return RecordWrite(
            moved_transaction=_move_transaction(txn, TransactionAction.LOSE_ANSWER, {}, now)
        )
    action: IntentAction | None = None
    intent_changes: dict[str, object] = {}
    if result.outcome is NetworkOutcome.APPROVED:
        moved_transaction = _move_transaction(
            txn, TransactionAction.SUCCEED, {"reconciled": result.reconciled}, now
        )
        action, intent_changes = _approved_move(intent, txn, result)
    else:
        moved_transaction = _move_transaction(
            txn,
            TransactionAction.FAIL,
            {
                "decline_code": result.decline_code,
                "failure_code": result.failure_code,
                "reconciled": result.reconciled,
            },
            now,
        )
        # A failed capture/void/refund leaves the intent where it was: the authorization or
        # the money stays as it was. A failed charge fails the attempt.
        if txn.type == TransactionType.CHARGE.value:
            action, intent_changes = (
                IntentAction.ATTEMPT_FAILED,
                {"last_error": _last_error(result)},
            )
    write = RecordWrite(
        moved_transaction=moved_transaction,
        # The charge's outcome is definite: no authorization will read its card
        # number again (capture, void and refund go by reference), so it goes,
        # with the outcome's commit.
        shredded_card_token=txn.card_token_id,
    )
    expected = intent.status
    changes: dict[str, object] = {}
    if action is not None:
        move = move_intent(intent.status, action)
        previous = intent_state(intent)
        changes = {
            **changed_columns(intent, {"status": move.after.value, **intent_changes}),
            "updated_at": now,
        }
        for name, value in changes.items():
            setattr(intent, name, value)
        write.event = payment_event(
            locked, cause=cause, event_type=move.event_type, txn=txn, previous=previous
        )
        write.deliveries = planned_deliveries(
            intent.merchant_id, locked.endpoints, [(write.event["id"], write.event["type"])]
        )
    if intent.review_open:  # the outcome is known now: an open review is resolved
        changes["manual_review_resolved_at"] = intent.manual_review_resolved_at = now
    if changes:
        write.moved_intent = (intent.id, expected, changes)
    return write


def _move_transaction(
    txn: TransactionRow, action: TransactionAction, changes: dict[str, object], now: datetime
) -> tuple[str, str, dict[str, object]]:
    expected = txn.status
    after = move_transaction(txn.status, action)
    values = {**changed_columns(txn, {"status": after.value, **changes}), "updated_at": now}
    for name, value in values.items():
        setattr(txn, name, value)
    return txn.id, expected, values


def payment_event(
    locked: LockedPayment,
    *,
    cause: str,
    event_type: str,
    txn: TransactionRow,
    previous: dict[str, object],
) -> dict[str, Any]:
    """The payment's event for the move just applied to `locked.intent`, at its chain's end."""
    intent = locked.intent
    return chained_event_row(
        chain=intent.id,
        tail_seq=locked.tail_seq,
        tail_hash=locked.tail_hash,
        now=locked.now,
        event_id=event_id_for(cause),
        merchant_id=intent.merchant_id,
        event_type=event_type,
        data=event_data(intent, txn, previous),
        payment_intent_id=intent.id,
        transaction_id=txn.id,
        in_intent_story=True,
    )


def _approved_move(
    intent: IntentRow, txn: TransactionRow, result: Outcome
) -> tuple[IntentAction, dict[str, object]]:
    if txn.type == TransactionType.CHARGE.value:
        if intent.capture_method == CaptureMethod.MANUAL.value:
            return IntentAction.AUTHORIZATION_SUCCEEDED, {
                "amount_capturable": txn.amount_in_cents,
                "last_error": None,
            }
        return IntentAction.CHARGE_SUCCEEDED, {
            "amount_received": txn.amount_in_cents,
            "last_error": None,
        }
    if txn.type == TransactionType.CAPTURE.value:
        # The rest of the authorization is released by the network with the capture.
        return IntentAction.CAPTURE, {
            "amount_received": txn.amount_in_cents,
            "amount_capturable": 0,
        }
    if txn.type == TransactionType.VOID.value:
        return IntentAction.CANCEL, {
            "amount_capturable": 0,
            "cancellation_reason": result.cancellation_reason,
        }
    refunded = intent.amount_refunded + txn.amount_in_cents
    return (
        refund_action(refunded_after=refunded, received=intent.amount_received),
        {"amount_refunded": refunded},
    )


def already_applied(txn: TransactionRow, result: Outcome) -> bool:
    expected = {
        NetworkOutcome.APPROVED: TransactionStatus.SUCCEEDED,
        NetworkOutcome.DECLINED: TransactionStatus.FAILED,
        NetworkOutcome.FAILED: TransactionStatus.FAILED,
        NetworkOutcome.UNKNOWN: TransactionStatus.TIMEOUT,
    }[result.outcome]
    return txn.status == expected.value


def _last_error(result: Outcome) -> dict[str, str | None]:
    if result.outcome is NetworkOutcome.DECLINED:
        return {
            "type": "card_error",
            "code": "card_declined",
            "declineCode": result.decline_code,
            "message": f"The card was declined ({result.decline_code}).",
        }
    return {
        "type": "card_error",
        "code": result.failure_code or "processing_error",
        "declineCode": None,
        "message": "The card network could not process the charge; nothing was charged.",
    }
