"""PaymentState without a server: the guards (which refusal, with which ApplicationError type),
the status bookkeeping and its deadlines, the money learned from answers and from the database,
the expiry void's backoff, and the state carried across continue-as-new."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from activities.persistence import PaymentSnapshot, UnsettledOperation
from core.domain import CaptureMethod, IntentStatus, TransactionStatus, TransactionType
from core.errors import ErrorType
from workflows.payment_messages import CarriedState, LifecyclePolicy, Money, UnknownOutcome
from workflows.payment_state import (
    EXPIRY_VOID_FIRST_RETRY_SECONDS,
    EXPIRY_VOID_MAX_FAILURES,
    PaymentState,
    refused,
)

S = IntentStatus
# Distinct, small numbers so every computed deadline is recognisable.
AUTH_EXPIRY = 1_000.0
REFUND_WINDOW = 5_000.0
LIFECYCLE = LifecyclePolicy(
    authorization_expiry_seconds=AUTH_EXPIRY, refund_window_seconds=REFUND_WINDOW
)
ALL_STATUSES = list(IntentStatus)


# ---- builders ------------------------------------------------------------------------------
def fresh(capture_method: CaptureMethod = CaptureMethod.MANUAL) -> PaymentState:
    """A run opened without carried state (a charge, or an operation before `load`)."""
    return PaymentState(None, capture_method=capture_method, lifecycle=LIFECYCLE)


def carried(
    status: IntentStatus,
    *,
    money: Money | None = None,
    unknown: UnknownOutcome | None = None,
    review_open: bool = False,
    capture_method: CaptureMethod = CaptureMethod.MANUAL,
) -> PaymentState:
    """A run continued as new: it knows the payment (`loaded`)."""
    return PaymentState(
        CarriedState(status, unknown, money, review_open),
        capture_method=capture_method,
        lifecycle=LIFECYCLE,
    )


def authorized(capturable: int = 500, *, expires_at: float | None = 10_000.0) -> PaymentState:
    return carried(
        S.REQUIRES_CAPTURE,
        money=Money(
            authorization_reference="txn_auth",
            amount_capturable=capturable,
            authorization_expires_at=expires_at,
        ),
    )


def paid(
    received: int = 1_000,
    refunded: int = 0,
    *,
    status: IntentStatus = S.SUCCEEDED,
    window_ends_at: float | None = 10_000.0,
) -> PaymentState:
    return carried(
        status,
        money=Money(
            authorization_reference="txn_charge",
            payment_reference="txn_charge",
            amount_received=received,
            amount_refunded=refunded,
            refund_window_ends_at=window_ends_at,
        ),
    )


def unknown_outcome(transaction_id: str = "txn_unknown") -> UnknownOutcome:
    return UnknownOutcome(transaction_id, operation=TransactionType.CAPTURE, amount_in_cents=500)


def snapshot(status: str, **fields: Any) -> PaymentSnapshot:
    return PaymentSnapshot(status, **fields)


def assert_refused(
    error: pytest.ExceptionInfo[ApplicationError], kind: str, message: str | None = None
) -> None:
    assert error.value.type == kind
    assert error.value.non_retryable is True
    if message is not None:
        assert error.value.message == message


# ---- constants and refused ---------------------------------------------------------------------
def test_expiry_void_constants() -> None:
    assert EXPIRY_VOID_FIRST_RETRY_SECONDS == 60.0
    assert EXPIRY_VOID_MAX_FAILURES == 5


def test_refused_defaults_to_a_non_retryable_illegal_transition() -> None:
    error = refused("no")
    assert isinstance(error, ApplicationError)
    assert (error.message, error.type, error.non_retryable) == (
        "no",
        ErrorType.ILLEGAL_TRANSITION,
        True,
    )


def test_refused_takes_its_kind() -> None:
    error = refused("too much", ErrorType.AMOUNT_INVALID)
    assert (error.message, error.type, error.non_retryable) == ("too much", "AmountInvalid", True)


# ---- construction ------------------------------------------------------------------------------
def test_a_fresh_state_is_created_not_loaded_and_holds_nothing() -> None:
    state = fresh(CaptureMethod.AUTOMATIC)
    assert state.loaded is False
    assert state.status is S.CREATED
    assert state.money == Money()
    assert state.unknown is None
    assert state.review_open is False
    assert state.charging is False
    assert state.capture_method is CaptureMethod.AUTOMATIC
    assert state.lifecycle is LIFECYCLE


def test_a_carried_state_is_loaded_with_what_it_carries() -> None:
    money = Money(amount_received=700)
    unknown = unknown_outcome()
    state = carried(S.SUCCEEDED, money=money, unknown=unknown, review_open=True)
    assert state.loaded is True
    assert state.status is S.SUCCEEDED
    assert state.money is money
    assert state.unknown is unknown
    assert state.review_open is True
    assert state.charging is False


def test_a_carried_state_without_money_starts_with_empty_money() -> None:
    state = carried(S.CREATED)
    assert state.money == Money()


# ---- check_charge ------------------------------------------------------------------------------
def test_check_charge_passes_on_a_fresh_state() -> None:
    fresh().check_charge()


def test_check_charge_refuses_while_charging() -> None:
    state = fresh()
    state.charging = True
    with pytest.raises(ApplicationError) as error:
        state.check_charge()
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT, "a charge attempt is already in flight")


def test_check_charge_refuses_while_an_outcome_is_unknown() -> None:
    state = fresh()
    state.unknown = UnknownOutcome("txn_1")
    with pytest.raises(ApplicationError) as error:
        state.check_charge()
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT, "a charge attempt is already in flight")


def test_check_charge_in_flight_wins_over_an_illegal_status() -> None:
    state = carried(S.SUCCEEDED, unknown=unknown_outcome())
    with pytest.raises(ApplicationError) as error:
        state.check_charge()
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT)


@pytest.mark.parametrize("status", [S.CREATED, S.FAILED])
def test_check_charge_passes_where_a_charge_may_start(status: IntentStatus) -> None:
    carried(status).check_charge()


@pytest.mark.parametrize("status", [s for s in ALL_STATUSES if s not in (S.CREATED, S.FAILED)])
def test_check_charge_refuses_a_loaded_status_that_cannot_be_charged(status: IntentStatus) -> None:
    with pytest.raises(ApplicationError) as error:
        carried(status).check_charge()
    assert_refused(
        error,
        ErrorType.ILLEGAL_TRANSITION,
        f"cannot charge a payment intent in status {status.value}",
    )


def test_check_charge_does_not_check_the_status_when_not_loaded() -> None:
    state = fresh()
    state.status = S.SUCCEEDED
    state.check_charge()


# ---- check_capture -----------------------------------------------------------------------------
@pytest.mark.parametrize("amount", [None, 1, 499, 500])
def test_check_capture_passes_up_to_the_amount_authorized(amount: int | None) -> None:
    authorized(500).check_capture(amount)


@pytest.mark.parametrize("amount", [501, 10_000])
def test_check_capture_refuses_more_than_authorized(amount: int) -> None:
    with pytest.raises(ApplicationError) as error:
        authorized(500).check_capture(amount)
    assert_refused(
        error, ErrorType.AMOUNT_INVALID, f"amount {amount} is more than the 500 authorized"
    )


@pytest.mark.parametrize("amount", [0, -1])
def test_check_capture_refuses_an_amount_below_one(amount: int) -> None:
    with pytest.raises(ApplicationError) as error:
        authorized(500).check_capture(amount)
    assert_refused(error, ErrorType.AMOUNT_INVALID)


def test_check_capture_does_not_check_the_amount_when_not_loaded() -> None:
    state = fresh()  # nothing capturable known yet: checked again after `load`
    assert state.money.amount_capturable == 0
    state.check_capture(10_000)


def test_check_capture_does_not_check_the_status_when_not_loaded() -> None:
    state = fresh()
    state.status = S.REFUNDED
    state.check_capture(None)


@pytest.mark.parametrize("status", [s for s in ALL_STATUSES if s is not S.REQUIRES_CAPTURE])
def test_check_capture_refuses_a_loaded_status_without_authorization(status: IntentStatus) -> None:
    with pytest.raises(ApplicationError) as error:
        carried(status).check_capture(None)
    assert_refused(
        error,
        ErrorType.ILLEGAL_TRANSITION,
        f"cannot capture a payment intent in status {status.value}",
    )


def test_check_capture_checks_the_status_before_the_amount() -> None:
    state = carried(S.SUCCEEDED, money=Money(amount_capturable=0))
    with pytest.raises(ApplicationError) as error:
        state.check_capture(999)
    assert_refused(error, ErrorType.ILLEGAL_TRANSITION)


def test_check_capture_refuses_while_an_outcome_is_unknown() -> None:
    state = authorized(500)
    state.unknown = unknown_outcome()
    with pytest.raises(ApplicationError) as error:
        state.check_capture(100)
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT, "an operation on this payment is in flight")


def test_check_capture_refuses_while_charging() -> None:
    state = fresh()
    state.charging = True
    with pytest.raises(ApplicationError) as error:
        state.check_capture(None)
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT, "an operation on this payment is in flight")


# ---- check_cancel ------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [S.CREATED, S.FAILED, S.REQUIRES_CAPTURE])
def test_check_cancel_passes_where_a_cancel_is_legal(status: IntentStatus) -> None:
    carried(status).check_cancel()


@pytest.mark.parametrize(
    "status", [S.PROCESSING, S.SUCCEEDED, S.CANCELED, S.PARTIALLY_REFUNDED, S.REFUNDED]
)
def test_check_cancel_refuses_a_loaded_status_that_cannot_be_canceled(status: IntentStatus) -> None:
    with pytest.raises(ApplicationError) as error:
        carried(status).check_cancel()
    assert_refused(
        error,
        ErrorType.ILLEGAL_TRANSITION,
        f"cannot cancel a payment intent in status {status.value}",
    )


def test_check_cancel_does_not_check_the_status_when_not_loaded() -> None:
    state = fresh()
    state.status = S.CANCELED
    state.check_cancel()


def test_check_cancel_refuses_while_an_outcome_is_unknown() -> None:
    state = authorized()
    state.unknown = unknown_outcome()
    with pytest.raises(ApplicationError) as error:
        state.check_cancel()
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT)


def test_check_cancel_refuses_while_charging() -> None:
    state = fresh()
    state.charging = True
    with pytest.raises(ApplicationError) as error:
        state.check_cancel()
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT)


# ---- check_refund ------------------------------------------------------------------------------
@pytest.mark.parametrize("amount", [None, 1, 700])
def test_check_refund_passes_up_to_what_is_left(amount: int | None) -> None:
    paid(1_000, 300, status=S.PARTIALLY_REFUNDED).check_refund(amount, now=9_999.0)


@pytest.mark.parametrize("amount", [701, 1_000])
def test_check_refund_refuses_more_than_is_left(amount: int) -> None:
    with pytest.raises(ApplicationError) as error:
        paid(1_000, 300, status=S.PARTIALLY_REFUNDED).check_refund(amount, now=0.0)
    assert_refused(
        error, ErrorType.AMOUNT_INVALID, f"amount {amount} is more than the 700 left to refund"
    )


@pytest.mark.parametrize("amount", [0, -100])
def test_check_refund_refuses_an_amount_below_one(amount: int) -> None:
    with pytest.raises(ApplicationError) as error:
        paid(1_000).check_refund(amount, now=0.0)
    assert_refused(error, ErrorType.AMOUNT_INVALID)


def test_check_refund_passes_just_before_the_window_ends() -> None:
    paid(window_ends_at=10_000.0).check_refund(None, now=9_999.999)


@pytest.mark.parametrize("now", [10_000.0, 10_000.001, 50_000.0])
def test_check_refund_refuses_once_the_window_is_over(now: float) -> None:
    with pytest.raises(ApplicationError) as error:
        paid(window_ends_at=10_000.0).check_refund(None, now=now)
    assert_refused(error, ErrorType.ILLEGAL_TRANSITION, "the refund window of this payment is over")


def test_check_refund_checks_the_window_before_the_amount() -> None:
    with pytest.raises(ApplicationError) as error:
        paid(1_000, window_ends_at=10_000.0).check_refund(5_000, now=10_000.0)
    assert_refused(error, ErrorType.ILLEGAL_TRANSITION)


def test_check_refund_without_a_window_never_ends() -> None:
    paid(window_ends_at=None).check_refund(1_000, now=1e12)


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.PARTIALLY_REFUNDED])
def test_check_refund_passes_a_refundable_status(status: IntentStatus) -> None:
    paid(status=status).check_refund(None, now=0.0)


@pytest.mark.parametrize(
    "status", [s for s in ALL_STATUSES if s not in (S.SUCCEEDED, S.PARTIALLY_REFUNDED)]
)
def test_check_refund_refuses_a_loaded_status_that_cannot_be_refunded(status: IntentStatus) -> None:
    with pytest.raises(ApplicationError) as error:
        paid(status=status).check_refund(None, now=0.0)
    assert_refused(
        error,
        ErrorType.ILLEGAL_TRANSITION,
        f"cannot refund partial a payment intent in status {status.value}",
    )


def test_check_refund_checks_the_status_before_the_window() -> None:
    with pytest.raises(ApplicationError) as error:
        paid(status=S.REFUNDED, window_ends_at=10.0).check_refund(None, now=20.0)
    assert_refused(
        error,
        ErrorType.ILLEGAL_TRANSITION,
        "cannot refund partial a payment intent in status refunded",
    )


def test_check_refund_passes_everything_when_not_loaded() -> None:
    state = fresh()
    state.status = S.REFUNDED
    state.money.refund_window_ends_at = 10.0
    state.check_refund(1_000_000, now=20.0)  # checked again once the payment is loaded


def test_check_refund_refuses_while_an_outcome_is_unknown_even_when_not_loaded() -> None:
    state = fresh()
    state.unknown = unknown_outcome()
    with pytest.raises(ApplicationError) as error:
        state.check_refund(None, now=0.0)
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT, "an operation on this payment is in flight")


def test_check_refund_refuses_while_charging() -> None:
    state = paid()
    state.charging = True
    with pytest.raises(ApplicationError) as error:
        state.check_refund(None, now=0.0)
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT)


# ---- move_to -----------------------------------------------------------------------------------
def test_move_to_returns_true_only_when_the_status_changes() -> None:
    state = fresh()
    assert state.move_to("processing", now=1.0) is True
    assert state.status is S.PROCESSING
    assert state.move_to("processing", now=2.0) is False
    assert state.move_to(S.PROCESSING, now=3.0) is False
    assert state.move_to(S.FAILED, now=4.0) is True
    assert state.status is S.FAILED


def test_move_to_an_unknown_status_raises_and_keeps_the_status() -> None:
    state = fresh()
    with pytest.raises(ValueError):
        state.move_to("exploded", now=1.0)
    assert state.status is S.CREATED


def test_move_to_requires_capture_arms_the_expiry_from_now_without_authorized_at() -> None:
    state = fresh()
    state.move_to(S.REQUIRES_CAPTURE, now=100.0)
    assert state.money.authorization_expires_at == 100.0 + AUTH_EXPIRY
    assert state.money.refund_window_ends_at is None


def test_move_to_requires_capture_arms_the_expiry_from_an_earlier_authorized_at() -> None:
    state = fresh()
    state.move_to(S.REQUIRES_CAPTURE, now=3_700.0, authorized_at=100.0)
    assert state.money.authorization_expires_at == 1_100.0


def test_move_to_requires_capture_never_starts_the_clock_after_now() -> None:
    state = fresh()
    state.move_to(S.REQUIRES_CAPTURE, now=100.0, authorized_at=250.0)  # network clock ahead
    assert state.money.authorization_expires_at == 1_100.0


def test_move_to_arms_the_authorization_expiry_only_once() -> None:
    state = fresh()
    state.move_to(S.REQUIRES_CAPTURE, now=100.0)
    assert state.move_to(S.REQUIRES_CAPTURE, now=500.0, authorized_at=400.0) is False
    assert state.money.authorization_expires_at == 1_100.0


def test_move_to_keeps_a_carried_authorization_expiry() -> None:
    state = authorized(expires_at=42.0)
    state.move_to(S.REQUIRES_CAPTURE, now=100.0)
    assert state.money.authorization_expires_at == 42.0


@pytest.mark.parametrize("status", [S.PROCESSING, S.SUCCEEDED, S.FAILED, S.CANCELED])
def test_move_to_a_status_without_authorization_arms_no_expiry(status: IntentStatus) -> None:
    state = fresh()
    state.move_to(status, now=100.0, authorized_at=90.0)
    assert state.money.authorization_expires_at is None


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.PARTIALLY_REFUNDED])
def test_move_to_a_refundable_status_arms_the_refund_window_from_now(status: IntentStatus) -> None:
    state = fresh()
    state.move_to(status, now=100.0, authorized_at=50.0)
    assert state.money.refund_window_ends_at == 100.0 + REFUND_WINDOW


def test_move_to_arms_the_refund_window_only_once() -> None:
    state = fresh()
    state.move_to(S.SUCCEEDED, now=100.0)
    assert state.move_to(S.PARTIALLY_REFUNDED, now=900.0) is True
    assert state.money.refund_window_ends_at == 5_100.0


@pytest.mark.parametrize(
    "status", [S.CREATED, S.PROCESSING, S.REQUIRES_CAPTURE, S.FAILED, S.CANCELED, S.REFUNDED]
)
def test_move_to_a_status_that_cannot_be_refunded_arms_no_window(status: IntentStatus) -> None:
    state = fresh()
    state.move_to(status, now=100.0)
    assert state.money.refund_window_ends_at is None


def test_move_to_along_the_manual_capture_path_arms_both_clocks() -> None:
    state = fresh()
    assert state.move_to(S.PROCESSING, now=5.0) is True
    assert state.move_to(S.REQUIRES_CAPTURE, now=10.0, authorized_at=8.0) is True
    assert state.move_to(S.SUCCEEDED, now=20.0) is True
    assert state.money.authorization_expires_at == 8.0 + AUTH_EXPIRY
    assert state.money.refund_window_ends_at == 20.0 + REFUND_WINDOW
    assert state.next_deadline() is None  # the expiry no longer matters once captured


# ---- learn -------------------------------------------------------------------------------------
SUCCEEDED = TransactionStatus.SUCCEEDED.value


def test_learn_an_automatic_charge_receives_the_money() -> None:
    state = fresh(CaptureMethod.AUTOMATIC)
    state.learn(TransactionType.CHARGE, "txn_c", 2_499, SUCCEEDED)
    assert state.money == Money(
        authorization_reference="txn_c", payment_reference="txn_c", amount_received=2_499
    )


def test_learn_a_manual_charge_holds_the_money_as_capturable() -> None:
    state = fresh(CaptureMethod.MANUAL)
    state.learn(TransactionType.CHARGE, "txn_a", 2_499, SUCCEEDED)
    assert state.money == Money(authorization_reference="txn_a", amount_capturable=2_499)


def test_learn_a_capture_receives_the_captured_amount_and_releases_the_rest() -> None:
    state = authorized(2_499)
    state.learn(TransactionType.CAPTURE, "txn_cap", 2_000, SUCCEEDED)
    assert state.money.payment_reference == "txn_cap"
    assert state.money.authorization_reference == "txn_auth"
    assert state.money.amount_received == 2_000
    assert state.money.amount_capturable == 0
    assert state.refundable() == 2_000


def test_learn_a_void_releases_the_authorization() -> None:
    state = authorized(2_499)
    state.learn(TransactionType.VOID, "txn_void", 2_499, SUCCEEDED)
    assert state.money == Money(
        authorization_reference="txn_auth", amount_capturable=0, authorization_expires_at=10_000.0
    )


def test_learn_refunds_add_up() -> None:
    state = paid(1_000)
    state.learn(TransactionType.REFUND, "txn_r1", 300, SUCCEEDED)
    assert (state.money.amount_refunded, state.refundable()) == (300, 700)
    state.learn(TransactionType.REFUND, "txn_r2", 200, SUCCEEDED)
    assert (state.money.amount_refunded, state.refundable()) == (500, 500)
    assert state.money.payment_reference == "txn_charge"
    assert state.money.amount_received == 1_000


def test_learn_accepts_the_status_enum() -> None:
    state = fresh(CaptureMethod.MANUAL)
    state.learn(TransactionType.CHARGE, "txn_a", 100, TransactionStatus.SUCCEEDED)
    assert state.money.amount_capturable == 100


@pytest.mark.parametrize("status", ["pending", "failed", "timeout"])
@pytest.mark.parametrize("kind", list(TransactionType))
def test_learn_ignores_what_did_not_succeed(kind: TransactionType, status: str) -> None:
    state = paid(1_000, 100)
    before = Money(**vars(state.money))
    state.learn(kind, "txn_x", 50, status)
    assert state.money == before


def test_refundable_is_received_minus_refunded() -> None:
    assert paid(1_000, 350).refundable() == 650
    assert fresh().refundable() == 0


# ---- load --------------------------------------------------------------------------------------
def test_load_an_authorization_takes_its_money_and_arms_its_expiry() -> None:
    state = fresh()
    state.load(
        snapshot(
            "requires_capture",
            amount_capturable=2_499,
            authorization_reference="txn_auth",
            authorized_at=100.0,
        )
    )
    assert state.loaded is True
    assert state.status is S.REQUIRES_CAPTURE
    assert state.money == Money(
        authorization_reference="txn_auth",
        amount_capturable=2_499,
        authorization_expires_at=100.0 + AUTH_EXPIRY,
    )
    assert state.unknown is None
    assert state.review_open is False
    assert state.next_deadline() == 1_100.0


def test_load_a_payment_takes_its_money_and_arms_its_refund_window() -> None:
    state = fresh()
    state.load(
        snapshot(
            "partially_refunded",
            amount_received=1_000,
            amount_refunded=250,
            authorization_reference="txn_auth",
            payment_reference="txn_cap",
            authorized_at=100.0,
            succeeded_at=200.0,
        )
    )
    assert state.status is S.PARTIALLY_REFUNDED
    assert state.money == Money(
        authorization_reference="txn_auth",
        payment_reference="txn_cap",
        amount_received=1_000,
        amount_refunded=250,
        authorization_expires_at=None,  # no authorization held any more
        refund_window_ends_at=200.0 + REFUND_WINDOW,
    )
    assert state.refundable() == 750


def test_load_without_clocks_arms_no_deadline() -> None:
    state = fresh()
    state.load(snapshot("succeeded", amount_received=10))
    assert state.money.authorization_expires_at is None
    assert state.money.refund_window_ends_at is None


def test_load_then_check_refund_uses_the_loaded_window() -> None:
    state = fresh()
    state.load(
        snapshot("succeeded", amount_received=1_000, payment_reference="txn_c", succeeded_at=0.0)
    )
    state.check_refund(1_000, now=REFUND_WINDOW - 1)
    with pytest.raises(ApplicationError) as error:
        state.check_refund(1_000, now=REFUND_WINDOW)
    assert_refused(error, ErrorType.ILLEGAL_TRANSITION, "the refund window of this payment is over")


def test_load_then_check_capture_checks_status_and_amount() -> None:
    state = fresh()
    state.check_capture(5_000)  # not loaded yet: passes
    state.load(
        snapshot(
            "requires_capture",
            amount_capturable=2_000,
            authorization_reference="txn_a",
            authorized_at=0.0,
        )
    )
    with pytest.raises(ApplicationError) as error:
        state.check_capture(5_000)
    assert_refused(error, ErrorType.AMOUNT_INVALID, "amount 5000 is more than the 2000 authorized")


def test_load_an_unsettled_operation_makes_it_unknown() -> None:
    state = fresh()
    state.load(
        snapshot(
            "succeeded",
            amount_received=1_000,
            succeeded_at=0.0,
            unsettled=UnsettledOperation("txn_r", TransactionType.REFUND, 250),
        )
    )
    assert state.unknown == UnknownOutcome(
        "txn_r", operation=TransactionType.REFUND, amount_in_cents=250, in_manual_review=False
    )
    assert state.review_open is False
    assert state.at_rest() is False


def test_load_an_unsettled_operation_in_manual_review() -> None:
    state = fresh()
    state.load(
        snapshot(
            "requires_capture",
            amount_capturable=500,
            authorized_at=0.0,
            unsettled=UnsettledOperation("txn_v", TransactionType.VOID, 500),
            in_manual_review=True,
        )
    )
    assert state.unknown == UnknownOutcome(
        "txn_v", operation=TransactionType.VOID, amount_in_cents=500, in_manual_review=True
    )
    assert state.review_open is True
    assert state.expiry_due(1e12) is False  # the void's outcome must be known first


def test_load_keeps_an_unknown_outcome_it_already_watches() -> None:
    state = fresh()
    watched = unknown_outcome("txn_watched")
    state.unknown = watched
    state.load(
        snapshot(
            "requires_capture",
            unsettled=UnsettledOperation("txn_other", TransactionType.CAPTURE, 1),
        )
    )
    assert state.unknown is watched


def test_load_replaces_the_money_and_the_review_flag() -> None:
    state = carried(
        S.CREATED, money=Money(amount_received=9, expiry_void_failures=3), review_open=True
    )
    state.load(snapshot("failed"))
    assert state.status is S.FAILED
    assert state.money == Money()
    assert state.review_open is False


# ---- expiry_due and next_deadline --------------------------------------------------------------
def test_expiry_due_from_the_expiry_on() -> None:
    state = authorized(expires_at=1_000.0)
    assert state.expiry_due(999.999) is False
    assert state.expiry_due(1_000.0) is True
    assert state.expiry_due(5_000.0) is True


def test_expiry_not_due_while_an_outcome_is_unknown() -> None:
    state = authorized(expires_at=1_000.0)
    state.unknown = unknown_outcome()
    assert state.expiry_due(2_000.0) is False


def test_expiry_not_due_without_an_authorization_held() -> None:
    state = carried(S.SUCCEEDED, money=Money(authorization_expires_at=1_000.0))
    assert state.expiry_due(2_000.0) is False


def test_expiry_not_due_without_an_expiry() -> None:
    assert authorized(expires_at=None).expiry_due(1e12) is False


def test_next_deadline_is_the_authorization_expiry() -> None:
    assert authorized(expires_at=1_234.5).next_deadline() == 1_234.5


def test_no_deadline_while_an_outcome_is_unknown() -> None:
    state = authorized(expires_at=1_234.5)
    state.unknown = unknown_outcome()
    assert state.next_deadline() is None


@pytest.mark.parametrize("status", [s for s in ALL_STATUSES if s is not S.REQUIRES_CAPTURE])
def test_no_deadline_without_an_authorization_held(status: IntentStatus) -> None:
    state = carried(status, money=Money(authorization_expires_at=1_234.5))
    assert state.next_deadline() is None


def test_no_deadline_on_a_fresh_state() -> None:
    assert fresh().next_deadline() is None


# ---- expiry_void_failed --------------------------------------------------------------------------
def test_expiry_void_failed_backs_off_then_asks_an_operator() -> None:
    state = authorized(expires_at=1_000.0)
    retries = []
    for now in (1_000.0, 1_060.0, 1_180.0, 1_420.0):
        assert state.expiry_void_failed(now=now) is False
        assert state.money.authorization_expires_at is not None
        retries.append(state.money.authorization_expires_at - now)
    assert retries == [60.0, 120.0, 240.0, 480.0]
    assert state.money.expiry_void_failures == 4
    assert state.money.authorization_expires_at == 1_900.0

    assert state.expiry_void_failed(now=1_900.0) is True
    assert state.money.expiry_void_failures == EXPIRY_VOID_MAX_FAILURES
    assert state.money.authorization_expires_at is None
    assert state.next_deadline() is None
    assert state.expiry_due(1e12) is False


def test_expiry_void_failed_schedules_the_retry_as_the_next_deadline() -> None:
    state = authorized(expires_at=1_000.0)
    assert state.expiry_due(1_000.0) is True
    state.expiry_void_failed(now=1_000.5)
    assert state.next_deadline() == 1_060.5
    assert state.expiry_due(1_060.0) is False
    assert state.expiry_due(1_060.5) is True


def test_expiry_void_failed_stays_with_the_operator_past_the_bound() -> None:
    state = authorized(expires_at=0.0)
    state.money.expiry_void_failures = EXPIRY_VOID_MAX_FAILURES
    assert state.expiry_void_failed(now=10.0) is True
    assert state.money.expiry_void_failures == EXPIRY_VOID_MAX_FAILURES + 1
    assert state.money.authorization_expires_at is None


def test_expiry_void_failures_are_carried() -> None:
    state = authorized(expires_at=0.0)
    state.expiry_void_failed(now=0.0)
    state.expiry_void_failed(now=60.0)
    following = PaymentState(
        state.carried(), capture_method=CaptureMethod.MANUAL, lifecycle=LIFECYCLE
    )
    assert following.expiry_void_failed(now=200.0) is False
    assert following.money.expiry_void_failures == 3
    assert following.money.authorization_expires_at == 440.0


# ---- at_rest -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "status", [S.CREATED, S.SUCCEEDED, S.FAILED, S.CANCELED, S.PARTIALLY_REFUNDED, S.REFUNDED]
)
def test_at_rest_when_nothing_is_watched(status: IntentStatus) -> None:
    assert carried(status).at_rest() is True


def test_not_at_rest_while_an_authorization_is_held() -> None:
    assert authorized().at_rest() is False
    assert authorized(expires_at=None).at_rest() is False


def test_not_at_rest_while_an_outcome_is_unknown() -> None:
    state = paid()
    state.unknown = unknown_outcome()
    assert state.at_rest() is False


def test_not_at_rest_while_charging() -> None:
    state = fresh()
    state.charging = True
    assert state.at_rest() is False
    state.charging = False
    assert state.at_rest() is True


# ---- carried -----------------------------------------------------------------------------------
def test_carried_holds_status_unknown_money_and_review() -> None:
    state = authorized(700)
    state.unknown = unknown_outcome()
    state.review_open = True
    assert state.carried() == CarriedState(
        S.REQUIRES_CAPTURE,
        unknown_outcome(),
        Money(
            authorization_reference="txn_auth",
            amount_capturable=700,
            authorization_expires_at=10_000.0,
        ),
        True,
    )


def test_carried_of_a_fresh_state() -> None:
    assert fresh().carried() == CarriedState(S.CREATED, None, Money(), False)


def test_carried_round_trips_into_a_new_state() -> None:
    state = fresh(CaptureMethod.MANUAL)
    state.move_to(S.REQUIRES_CAPTURE, now=100.0, authorized_at=90.0)
    state.learn(TransactionType.CHARGE, "txn_a", 900, SUCCEEDED)
    state.unknown = UnknownOutcome(
        "txn_cap",
        waited_seconds=30.0,
        next_delay_seconds=16.0,
        in_manual_review=True,
        operation=TransactionType.CAPTURE,
        amount_in_cents=400,
    )
    state.review_open = True
    state.charging = True

    following = PaymentState(
        state.carried(), capture_method=CaptureMethod.MANUAL, lifecycle=LIFECYCLE
    )
    assert following.loaded is True
    assert following.status is S.REQUIRES_CAPTURE
    assert following.money == Money(
        authorization_reference="txn_a",
        amount_capturable=900,
        authorization_expires_at=90.0 + AUTH_EXPIRY,
    )
    assert following.unknown == state.unknown
    assert following.review_open is True
    assert following.charging is False  # the lock does not survive a run


def test_carried_round_trips_through_the_default_data_converter() -> None:
    """Continue-as-new serializes it as JSON: enums and nested dataclasses come back typed."""
    state = paid(1_000, 250, status=S.PARTIALLY_REFUNDED, window_ends_at=123.5)
    state.unknown = UnknownOutcome(
        "txn_r", operation=TransactionType.REFUND, amount_in_cents=100, cancellation_reason=None
    )
    state.money.expiry_void_failures = 2
    converter = DataConverter.default.payload_converter
    [restored] = converter.from_payloads(converter.to_payloads([state.carried()]), [CarriedState])
    assert restored == state.carried()
    assert restored.status is S.PARTIALLY_REFUNDED
    assert restored.unknown is not None
    assert restored.unknown.operation is TransactionType.REFUND

    following = PaymentState(restored, capture_method=CaptureMethod.AUTOMATIC, lifecycle=LIFECYCLE)
    assert following.refundable() == 750
    assert following.money.refund_window_ends_at == 123.5
    with pytest.raises(ApplicationError) as error:
        following.check_refund(None, now=123.0)  # the carried refund is still unknown
    assert_refused(error, ErrorType.ATTEMPT_IN_FLIGHT)
    following.unknown = None
    following.check_refund(750, now=123.0)
    with pytest.raises(ApplicationError) as error:
        following.check_refund(751, now=123.0)
    assert_refused(error, ErrorType.AMOUNT_INVALID)
