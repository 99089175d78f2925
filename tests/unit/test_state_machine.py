from __future__ import annotations

import pytest

from core.domain import IntentStatus as I
from core.domain import TransactionStatus as T
from core.errors import IllegalTransition
from core.state_machine import (
    INTENT_TRANSITIONS,
    IntentAction,
    TransactionAction,
    can_start_charge,
    holds_authorization,
    is_final,
    is_refundable,
    move_intent,
    move_transaction,
)


def test_charge_path_moves_created_to_processing_to_succeeded() -> None:
    start = move_intent(I.CREATED, IntentAction.START_ATTEMPT)
    assert (start.after, start.event_type) == (I.PROCESSING, "payment.processing")
    done = move_intent(start.after, IntentAction.CHARGE_SUCCEEDED)
    assert (done.after, done.event_type) == (I.SUCCEEDED, "payment.succeeded")


def test_manual_capture_authorization_requires_capture() -> None:
    move = move_intent(I.PROCESSING, IntentAction.AUTHORIZATION_SUCCEEDED)
    assert (move.after, move.event_type) == (I.REQUIRES_CAPTURE, "payment.requires_capture")


def test_failed_intent_accepts_a_new_attempt() -> None:
    failed = move_intent(I.PROCESSING, IntentAction.ATTEMPT_FAILED).after
    assert failed is I.FAILED
    assert move_intent(failed, IntentAction.START_ATTEMPT).after is I.PROCESSING


@pytest.mark.parametrize(
    "status",
    [I.PROCESSING, I.SUCCEEDED, I.CANCELED, I.REQUIRES_CAPTURE, I.REFUNDED, I.PARTIALLY_REFUNDED],
)
def test_charge_is_refused_outside_created_and_failed(status: I) -> None:
    assert not can_start_charge(status)
    with pytest.raises(IllegalTransition):
        move_intent(status, IntentAction.START_ATTEMPT)


def test_every_event_type_is_in_the_contract() -> None:
    contract = {
        "payment.created",
        "payment.processing",
        "payment.requires_capture",
        "payment.succeeded",
        "payment.failed",
        "payment.canceled",
        "payment.refunded",
        "payment.partially_refunded",
    }
    produced = {f"payment.{after.value}" for after in INTENT_TRANSITIONS.values()}
    assert produced <= contract


def test_succeeded_cannot_fail_or_be_charged_again() -> None:
    with pytest.raises(IllegalTransition):
        move_intent(I.SUCCEEDED, IntentAction.ATTEMPT_FAILED)


def test_unknown_outcome_is_settled_only_by_the_network() -> None:
    timeout = move_transaction(T.PENDING, TransactionAction.LOSE_ANSWER)
    assert timeout is T.TIMEOUT
    assert move_transaction(timeout, TransactionAction.SUCCEED) is T.SUCCEEDED
    assert move_transaction(timeout, TransactionAction.FAIL) is T.FAILED
    for settled in (T.SUCCEEDED, T.FAILED):
        for action in TransactionAction:
            with pytest.raises(IllegalTransition):
                move_transaction(settled, action)


def test_illegal_transition_names_the_state() -> None:
    with pytest.raises(IllegalTransition, match="canceled"):
        move_intent("canceled", IntentAction.CAPTURE)


def test_status_predicates_follow_the_table() -> None:
    assert {s for s in I if is_final(s)} == {I.CANCELED, I.REFUNDED}
    assert {s for s in I if is_refundable(s)} == {I.SUCCEEDED, I.PARTIALLY_REFUNDED}
    assert {s for s in I if holds_authorization(s)} == {I.REQUIRES_CAPTURE}
