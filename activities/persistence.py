"""Database side effects of a payment: record before acting, record what happened after.

Every method is idempotent: a retry after a commit finds the row or event it already wrote and
returns the same answer without writing again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.db.discrepancies import open_discrepancy
from core.db.queries import (
    close_manual_review,
    event_exists,
    event_id_for,
    lock_intent,
    lock_transaction,
    open_manual_review,
    transition_intent,
    transition_transaction,
)
from core.db.tables import PaymentIntent, Transaction
from core.domain import (
    CaptureMethod,
    CardSummary,
    NetworkOutcome,
    TransactionStatus,
    TransactionType,
)
from core.errors import ErrorType, IllegalTransition
from core.reconciliation import DiscrepancyKind
from core.state_machine import (
    IntentAction,
    TransactionAction,
    can_move_intent,
    refund_action,
)

log = logging.getLogger("durapay.payments")
RecordMethod = TypeVar("RecordMethod", bound=Callable[..., Awaitable[Any]])


@dataclass
class ChargeAttempt:
    payment_intent_id: str
    transaction_id: str
    card_token_id: str
    card: CardSummary


@dataclass
class ChargeOutcome:
    payment_intent_id: str
    transaction_id: str
    outcome: NetworkOutcome
    decline_code: str | None = None
    failure_code: str | None = None
    # True when the network's truth was learned by a status query after an unknown answer.
    reconciled: bool = False


@dataclass
class IntentState:
    status: str
    transaction_status: str
    # True when this call appended an event (a second partial refund appends one without a
    # status change): the workflow fans it out to webhooks.
    event_appended: bool = False


@dataclass
class OperationAttempt:
    """A capture, void or refund about to be sent, under its own reference (its id)."""

    payment_intent_id: str
    transaction_id: str
    type: TransactionType
    amount_in_cents: int
    parent_reference: str


@dataclass
class OperationOutcome:
    payment_intent_id: str
    transaction_id: str
    outcome: NetworkOutcome
    decline_code: str | None = None
    failure_code: str | None = None
    reconciled: bool = False
    # For a void: why the intent is canceled.
    cancellation_reason: str | None = None


@dataclass
class IntentCancellation:
    """Cancel an intent that holds no authorization: no network call, only the record."""

    payment_intent_id: str
    reason: str


# What each operation does to the intent when the network approves it.
OPERATION_ACTIONS = {
    TransactionType.CAPTURE: IntentAction.CAPTURE,
    TransactionType.VOID: IntentAction.CANCEL,
    TransactionType.REFUND: IntentAction.REFUND_PARTIAL,
}
# Refunds that may still move money: succeeded, or not known yet.
OPEN_REFUND_STATUSES = (TransactionStatus.SUCCEEDED.value, TransactionStatus.PENDING.value,
                        TransactionStatus.TIMEOUT.value)


@dataclass
class ManualReviewFlag:
    payment_intent_id: str
    transaction_id: str
    waited_seconds: float
    # Why a person must look; the default is the reconciliation horizon.
    reason: str = ""


@dataclass
class OutcomeDiscrepancy:
    """The network answered, late, the opposite of what was recorded (an operator's verdict)."""

    payment_intent_id: str
    transaction_id: str
    recorded: NetworkOutcome
    network: NetworkOutcome


def refusals_are_final(activity_method: RecordMethod) -> RecordMethod:
    """A write the database will never accept (an illegal state change, a row that does not
    exist) is not retried: retrying would hold the payment's lock for ever. It fails for good,
    loudly, and the workflow puts the payment in front of an operator."""

    @functools.wraps(activity_method)
    async def refusing(self: Any, argument: Any) -> Any:
        try:
            return await activity_method(self, argument)
        except (IllegalTransition, LookupError, NoResultFound) as error:
            log.error("%s refused by the database: %s", activity_method.__name__, error)
            raise ApplicationError(f"{activity_method.__name__} refused: {error}",
                                   type=ErrorType.RECORD_REFUSED, non_retryable=True) from error

    return refusing  # type: ignore[return-value]


class PaymentRecordActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @activity.defn
    @refusals_are_final
    async def record_charge_attempt(self, attempt: ChargeAttempt) -> IntentState:
        """Write the pending transaction and `payment.processing` before the network is called.

        The transaction id is the network reference, so whatever happens next, every call to the
        network for this attempt carries the same idempotency key.
        """
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, attempt.payment_intent_id)
            existing = await lock_transaction(session, attempt.transaction_id)
            if existing is not None:
                return IntentState(intent.status, existing.status)
            session.add(Transaction(
                id=attempt.transaction_id, merchant_id=intent.merchant_id,
                payment_intent_id=intent.id, type=TransactionType.CHARGE.value,
                amount_in_cents=intent.amount_in_cents, currency=intent.currency,
                status=TransactionStatus.PENDING.value, network_reference=attempt.transaction_id,
                card_token_id=attempt.card_token_id, card_brand=attempt.card.brand,
                card_last4=attempt.card.last4, card_exp_month=attempt.card.exp_month,
                card_exp_year=attempt.card.exp_year,
            ))
            await session.flush()
            await transition_intent(session, intent, IntentAction.START_ATTEMPT,
                                    cause=f"{attempt.transaction_id}:start",
                                    transaction_id=attempt.transaction_id)
            return IntentState(intent.status, TransactionStatus.PENDING.value)

    @activity.defn
    @refusals_are_final
    async def record_charge_outcome(self, result: ChargeOutcome) -> IntentState:
        """Apply the network's answer to the transaction and the intent, with their events."""
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, result.payment_intent_id)
            txn = await lock_transaction(session, result.transaction_id)
            if txn is None:
                raise LookupError(f"transaction {result.transaction_id} was never recorded")
            cause = f"{txn.id}:{result.outcome.value}"
            if await event_exists(session, event_id_for(cause)) or _already_applied(txn, result):
                return IntentState(intent.status, txn.status)
            if result.outcome is NetworkOutcome.APPROVED:
                await transition_transaction(session, txn, TransactionAction.SUCCEED,
                                             {"reconciled": result.reconciled})
                if intent.capture_method == CaptureMethod.MANUAL.value:
                    await transition_intent(
                        session, intent, IntentAction.AUTHORIZATION_SUCCEEDED, cause=cause,
                        transaction_id=txn.id,
                        changes={"amount_capturable": txn.amount_in_cents, "last_error": None})
                else:
                    await transition_intent(
                        session, intent, IntentAction.CHARGE_SUCCEEDED, cause=cause,
                        transaction_id=txn.id,
                        changes={"amount_received": txn.amount_in_cents, "last_error": None})
            elif result.outcome is NetworkOutcome.UNKNOWN:
                # The intent stays `processing`: an unknown outcome is never turned into a guess.
                await transition_transaction(session, txn, TransactionAction.LOSE_ANSWER)
            else:
                await transition_transaction(session, txn, TransactionAction.FAIL, {
                    "decline_code": result.decline_code, "failure_code": result.failure_code,
                    "reconciled": result.reconciled})
                await transition_intent(
                    session, intent, IntentAction.ATTEMPT_FAILED, cause=cause,
                    transaction_id=txn.id, changes={"last_error": _last_error(result)})
            if result.outcome is not NetworkOutcome.UNKNOWN:
                await close_manual_review(session, intent.id)
            return IntentState(intent.status, txn.status)

    @activity.defn
    @refusals_are_final
    async def record_operation_attempt(self, attempt: OperationAttempt) -> IntentState:
        """Write the pending capture/void/refund before the network is called.

        The last line of defence for money: under the intent's row lock, a refund that would
        bring succeeded plus unsettled refunds past the amount received is refused, whatever
        the workflow believed. No event: the intent's status does not change yet.
        """
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, attempt.payment_intent_id)
            existing = await lock_transaction(session, attempt.transaction_id)
            if existing is not None:
                return IntentState(intent.status, existing.status)
            if not can_move_intent(intent.status, OPERATION_ACTIONS[attempt.type]):
                raise ApplicationError(
                    str(IllegalTransition("payment intent", intent.status, attempt.type.value)),
                    type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)
            if attempt.type is TransactionType.REFUND:
                await _check_refund_fits(session, intent, attempt.amount_in_cents)
            session.add(Transaction(
                id=attempt.transaction_id, merchant_id=intent.merchant_id,
                payment_intent_id=intent.id, type=attempt.type.value,
                amount_in_cents=attempt.amount_in_cents, currency=intent.currency,
                status=TransactionStatus.PENDING.value, network_reference=attempt.transaction_id,
                parent_reference=attempt.parent_reference))
            return IntentState(intent.status, TransactionStatus.PENDING.value)

    @activity.defn
    @refusals_are_final
    async def record_operation_outcome(self, result: OperationOutcome) -> IntentState:
        """Apply the network's answer to a capture/void/refund and, if approved, to the intent
        (amounts, status and event in one database transaction)."""
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, result.payment_intent_id)
            txn = await lock_transaction(session, result.transaction_id)
            if txn is None:
                raise LookupError(f"transaction {result.transaction_id} was never recorded")
            cause = f"{txn.id}:{result.outcome.value}"
            if await event_exists(session, event_id_for(cause)):
                return IntentState(intent.status, txn.status, event_appended=True)
            if _already_applied(txn, result):
                return IntentState(intent.status, txn.status)
            appended = False
            if result.outcome is NetworkOutcome.APPROVED:
                await transition_transaction(session, txn, TransactionAction.SUCCEED,
                                             {"reconciled": result.reconciled})
                action, changes = _approved_move(intent, txn, result)
                await transition_intent(session, intent, action, cause=cause,
                                        transaction_id=txn.id, changes=changes)
                appended = True
            elif result.outcome is NetworkOutcome.UNKNOWN:
                await transition_transaction(session, txn, TransactionAction.LOSE_ANSWER)
            else:
                # The intent keeps its status: the authorization or the money stays where it was.
                await transition_transaction(session, txn, TransactionAction.FAIL, {
                    "decline_code": result.decline_code, "failure_code": result.failure_code,
                    "reconciled": result.reconciled})
            if result.outcome is not NetworkOutcome.UNKNOWN:
                await close_manual_review(session, intent.id)
            return IntentState(intent.status, txn.status, event_appended=appended)

    @activity.defn
    @refusals_are_final
    async def cancel_payment_intent(self, cancellation: IntentCancellation) -> IntentState:
        """Cancel an intent without a successful charge (nothing to release at the network)."""
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, cancellation.payment_intent_id)
            cause = f"{intent.id}:cancel"
            if await event_exists(session, event_id_for(cause)):
                return IntentState(intent.status, "", event_appended=True)
            await transition_intent(session, intent, IntentAction.CANCEL, cause=cause,
                                    transaction_id=None,
                                    changes={"cancellation_reason": cancellation.reason})
            return IntentState(intent.status, "", event_appended=True)

    @activity.defn
    @refusals_are_final
    async def flag_for_manual_review(self, flag: ManualReviewFlag) -> None:
        """Mark the intent for operators (`durapay review list`); its status stays `processing`.

        Not a state change of the payment, so no merchant event: the merchant keeps seeing
        `processing`, which is the truth, until the network or an operator settles it.
        """
        async with self._sessions() as session, session.begin():
            opened = await open_manual_review(session, flag.payment_intent_id)
        if opened and flag.reason:
            log.error("payment %s needs manual review: %s (%s)", flag.payment_intent_id,
                      flag.reason, flag.transaction_id)
        elif opened:
            log.error("payment %s needs manual review: the outcome of %s is still unknown after "
                      "%.0f s of status queries", flag.payment_intent_id, flag.transaction_id,
                      flag.waited_seconds)

    @activity.defn
    @refusals_are_final
    async def record_outcome_discrepancy(self, found: OutcomeDiscrepancy) -> None:
        """Open (once) a discrepancy for operators: the network's late answer contradicts the
        outcome recorded for the transaction. The record is never overwritten by it."""
        async with self._sessions() as session, session.begin():
            txn = await lock_transaction(session, found.transaction_id)
            if txn is None:
                raise LookupError(f"transaction {found.transaction_id} was never recorded")
            await open_discrepancy(
                session, kind=DiscrepancyKind.NETWORK_CONTRADICTS_RECORDED_OUTCOME,
                network_reference=txn.network_reference, merchant_id=txn.merchant_id,
                payment_intent_id=txn.payment_intent_id, transaction_id=txn.id,
                detail={"recorded": found.recorded.value, "network": found.network.value,
                        "transactionStatus": txn.status})


async def _check_refund_fits(session: AsyncSession, intent: PaymentIntent, amount: int) -> None:
    committed = (await session.exec(
        select(func.coalesce(func.sum(Transaction.amount_in_cents), 0)).where(
            Transaction.payment_intent_id == intent.id,
            Transaction.type == TransactionType.REFUND.value,
            Transaction.status.in_(OPEN_REFUND_STATUSES)))).one()  # type: ignore[attr-defined]
    if int(committed) + amount > intent.amount_received:
        raise ApplicationError(
            f"refund of {amount} exceeds what is left to refund "
            f"({intent.amount_received - int(committed)})",
            type=ErrorType.AMOUNT_INVALID, non_retryable=True)


def _approved_move(intent: PaymentIntent, txn: Transaction,
                   result: OperationOutcome) -> tuple[IntentAction, dict[str, object]]:
    if txn.type == TransactionType.CAPTURE.value:
        # The rest of the authorization is released by the network with the capture.
        return IntentAction.CAPTURE, {"amount_received": txn.amount_in_cents,
                                      "amount_capturable": 0}
    if txn.type == TransactionType.VOID.value:
        return IntentAction.CANCEL, {"amount_capturable": 0,
                                     "cancellation_reason": result.cancellation_reason}
    refunded = intent.amount_refunded + txn.amount_in_cents
    return (refund_action(refunded_after=refunded, received=intent.amount_received),
            {"amount_refunded": refunded})


def _already_applied(txn: Transaction, result: ChargeOutcome | OperationOutcome) -> bool:
    expected = {
        NetworkOutcome.APPROVED: TransactionStatus.SUCCEEDED,
        NetworkOutcome.DECLINED: TransactionStatus.FAILED,
        NetworkOutcome.FAILED: TransactionStatus.FAILED,
        NetworkOutcome.UNKNOWN: TransactionStatus.TIMEOUT,
    }[result.outcome]
    return txn.status == expected.value


def _last_error(result: ChargeOutcome) -> dict[str, str | None]:
    if result.outcome is NetworkOutcome.DECLINED:
        return {"type": "card_error", "code": "card_declined", "declineCode": result.decline_code,
                "message": f"The card was declined ({result.decline_code})."}
    return {"type": "card_error", "code": result.failure_code or "processing_error",
            "declineCode": None,
            "message": "The card network could not process the charge; nothing was charged."}
