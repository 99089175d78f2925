"""Database side effects of a payment: record before acting, record what happened after.

Every method is idempotent: a retry after a commit finds the row or event it already wrote and
returns the same answer without writing again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import func
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.payment_moves import already_applied, outcome_write, payment_event
from core.db.deliveries import plan_deliveries, planned_deliveries
from core.db.discrepancies import open_discrepancy
from core.db.payment_records import (
    REFUSED_BY_DATABASE,
    IntentRow,
    LockedPayment,
    RecordWrite,
    TransactionRow,
    deliveries_of_recorded,
    driver_connection,
    lock_payment,
    lock_payment_for_charge,
    read_payment,
    recorded_transaction,
    write_record,
)
from core.db.queries import (
    event_exists,
    event_id_for,
    intent_state,
    lock_intent,
    lock_transaction,
    open_manual_review,
    transition_intent,
)
from core.db.tables import PaymentIntent, Transaction
from core.domain import (
    CaptureMethod,
    CardSummary,
    IntentStatus,
    NetworkOutcome,
    RecordedTransaction,
    TransactionStatus,
    TransactionType,
)
from core.errors import ErrorType, IllegalTransition
from core.metrics import DISCREPANCIES_OPENED, MANUAL_REVIEWS_OPENED, count_recorded_outcome
from core.reconciliation import DiscrepancyKind
from core.state_machine import (
    IntentAction,
    can_move_intent,
    move_intent,
)

log = logging.getLogger("durapay.payments")
# The failure code of an outcome an operator recorded (`durapay review resolve`).
OPERATOR_VERDICT = "manual_review"
RecordMethod = TypeVar("RecordMethod", bound=Callable[..., Awaitable[Any]])


@dataclass
class ChargeAttempt:
    payment_intent_id: str
    transaction_id: str
    card_token_id: str
    card: CardSummary


@dataclass
class OperationAttempt:
    """A capture, void or refund about to be sent, under its own reference (its id)."""

    payment_intent_id: str
    transaction_id: str
    type: TransactionType
    amount_in_cents: int
    parent_reference: str


@dataclass
class ReversalAttempt:
    """A reversal about to be sent for a charge whose answer was lost, under its own reference."""

    payment_intent_id: str
    transaction_id: str
    reversal_reference: str


@dataclass
class Outcome:
    """The network's answer (or an operator's verdict) for one charge, capture, void or refund."""

    payment_intent_id: str
    transaction_id: str
    outcome: NetworkOutcome
    decline_code: str | None = None
    failure_code: str | None = None
    # True when the network's truth was learned by a status query after an unknown answer.
    reconciled: bool = False
    # For a void: why the intent is canceled.
    cancellation_reason: str | None = None


@dataclass
class Recorded:
    """What a record wrote: the intent's status after it, the transaction it concerns, and the
    webhook deliveries planned in the same database transaction for the events it appended
    (the workflow starts them; none when the merchant has no endpoint)."""

    status: str
    transaction: RecordedTransaction | None = None
    deliveries: list[str] = field(default_factory=list)


@dataclass
class IntentCancellation:
    """Cancel an intent that holds no authorization: no network call, only the record."""

    payment_intent_id: str
    reason: str


@dataclass
class UnsettledOperation:
    transaction_id: str
    type: TransactionType
    amount_in_cents: int
    # A reversal was recorded (and maybe sent): only its answer may settle the charge now.
    reversal_reference: str | None = None


@dataclass
class PaymentSnapshot:
    """A payment as the database knows it, for a run that starts after earlier ones closed
    (a refund a month after the charge): the money, the references operations act on, when its
    clocks started, and any operation whose outcome is still unknown."""

    status: str
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0
    authorization_reference: str | None = None
    payment_reference: str | None = None
    authorized_at: float | None = None  # unix seconds: the authorization's clock
    succeeded_at: float | None = None  # unix seconds: the refund window's clock
    unsettled: UnsettledOperation | None = None
    in_manual_review: bool = False


# What each operation does to the intent when the network approves it.
OPERATION_ACTIONS = {
    TransactionType.CAPTURE: IntentAction.CAPTURE,
    TransactionType.VOID: IntentAction.CANCEL,
    TransactionType.REFUND: IntentAction.REFUND_PARTIAL,
}
# Transactions whose outcome is not known yet.
UNSETTLED_STATUSES = (TransactionStatus.PENDING.value, TransactionStatus.TIMEOUT.value)
# Refunds that may still move money: succeeded, or not known yet.
OPEN_REFUND_STATUSES = (TransactionStatus.SUCCEEDED.value, *UNSETTLED_STATUSES)


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


# What the database will never accept (see refusals_are_final).
_REFUSALS: tuple[type[Exception], ...] = (
    IllegalTransition,
    LookupError,
    NoResultFound,
    IntegrityError,
    DataError,
    *REFUSED_BY_DATABASE,
)


def refusals_are_final(activity_method: RecordMethod) -> RecordMethod:
    """A write the database will never accept (an illegal state change, a row that does not
    exist, a constraint or a value it rejects) is not retried: the same write would fail the
    same way for ever while holding the payment's lock. It fails for good, loudly, and the
    workflow puts the payment in front of an operator. Only transient failures (the database
    unreachable, a connection lost) are retried, with backoff and no bound: a record is
    idempotent, sends nothing, and giving up on `record_outcome` would drop the network's
    answer (see DB_RETRY in workflows/payment_calls.py)."""

    @functools.wraps(activity_method)
    async def refusing(self: Any, argument: Any) -> Any:
        try:
            return await activity_method(self, argument)
        except _REFUSALS as error:
            reason = _refusal_reason(error)
            log.error("%s refused by the database: %s", activity_method.__name__, reason)
            raise ApplicationError(
                f"{activity_method.__name__} refused: {reason}",
                type=ErrorType.RECORD_REFUSED,
                non_retryable=True,
            ) from error

    return cast(RecordMethod, refusing)  # functools.wraps keeps its signature


def _refusal_reason(error: Exception) -> str:
    """The database's own message, without the statement and its parameters that SQLAlchemy
    appends to a driver error (they could carry what the row held)."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        first_line = str(error.orig).splitlines()[0] if str(error.orig) else ""
        return f"{type(error.orig).__name__}: {first_line}"
    return str(error)


class PaymentRecordActivities:
    """The payment's records. The two every charge writes (`record_charge_attempt`,
    `record_outcome`) run as plain SQL on the engine's driver connections
    (core/db/payment_records.py); the rest through the ORM's sessions."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine | None = None
    ) -> None:
        self._sessions = sessions
        self._engine: AsyncEngine = engine or sessions.kw["bind"]

    @activity.defn
    @refusals_are_final
    async def record_charge_attempt(self, attempt: ChargeAttempt) -> Recorded:
        """Write the pending transaction and `payment.processing` before the network is called.

        The transaction id is the network reference, so whatever happens next, every call to the
        network for this attempt carries the same idempotency key.
        """
        created_event = event_id_for(f"{attempt.payment_intent_id}:created")
        async with driver_connection(self._engine) as connection, connection.transaction():
            locked = await lock_payment_for_charge(
                connection,
                attempt.payment_intent_id,
                attempt.transaction_id,
                card_token_id=attempt.card_token_id,
                created_event_id=created_event,
            )
            intent = locked.intent
            _check_card_token(locked)
            cause = f"{attempt.transaction_id}:start"
            if locked.transaction is not None:  # a retry after the commit
                return Recorded(
                    intent.status,
                    recorded_transaction(locked.transaction),
                    await deliveries_of_recorded(
                        connection, intent.merchant_id, locked.endpoints, [event_id_for(cause)]
                    ),
                )
            move = move_intent(intent.status, IntentAction.START_ATTEMPT)
            txn = TransactionRow(
                id=attempt.transaction_id,
                type=TransactionType.CHARGE.value,
                status=TransactionStatus.PENDING.value,
                amount_in_cents=intent.amount_in_cents,
                card_token_id=attempt.card_token_id,
                decline_code=None,
                failure_code=None,
                reconciled=False,
                created_at=None,
                updated_at=None,
            )
            previous = intent_state(intent)
            intent.status = move.after.value
            event = payment_event(
                locked, cause=cause, event_type=move.event_type, txn=txn, previous=previous
            )
            # The first attempt also names `payment.created`'s deliveries, which the API starts:
            # if it could not (a Temporal outage), they start now; started ones are not redone.
            created = (
                [(created_event, "payment.created")]
                if move.before is IntentStatus.CREATED and locked.created_event_recorded
                else []
            )
            deliveries = planned_deliveries(
                intent.merchant_id, locked.endpoints, [*created, (event["id"], event["type"])]
            )
            written = await write_record(
                connection,
                RecordWrite(
                    inserted_transaction={
                        "id": (txn.id, "text"),
                        "merchant_id": (intent.merchant_id, "text"),
                        "payment_intent_id": (intent.id, "text"),
                        "type": (txn.type, "text"),
                        "amount_in_cents": (txn.amount_in_cents, "bigint"),
                        "currency": (intent.currency, "text"),
                        "status": (txn.status, "text"),
                        "network_reference": (txn.id, "text"),
                        "card_token_id": (attempt.card_token_id, "text"),
                        "card_brand": (attempt.card.brand, "text"),
                        "card_last4": (attempt.card.last4, "text"),
                        "card_exp_month": (attempt.card.exp_month, "int"),
                        "card_exp_year": (attempt.card.exp_year, "int"),
                        "reconciled": (False, "boolean"),
                    },
                    moved_intent=(
                        intent.id,
                        move.before.value,
                        {"status": intent.status, "updated_at": locked.now},
                    ),
                    event=event,
                    deliveries=deliveries,
                ),
            )
            if not written.intent_moved:  # never under the lock; refused rather than guessed
                raise IllegalTransition("payment intent", move.before, "start attempt")
            txn.created_at, txn.updated_at = (
                written.transaction_created_at,
                written.transaction_updated_at,
            )
            return Recorded(intent.status, recorded_transaction(txn), [d["id"] for d in deliveries])

    @activity.defn
    @refusals_are_final
    async def record_operation_attempt(self, attempt: OperationAttempt) -> Recorded:
        """Write the pending capture/void/refund before the network is called.

        The last line of defence for money: under the intent's row lock, a refund that would
        bring succeeded plus unsettled refunds past the amount received is refused, whatever
        the workflow believed. No event: the intent's status does not change yet.
        """
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, attempt.payment_intent_id)
            existing = await lock_transaction(session, attempt.transaction_id)
            if existing is not None:
                return Recorded(intent.status, recorded_transaction(existing))
            if not can_move_intent(intent.status, OPERATION_ACTIONS[attempt.type]):
                raise ApplicationError(
                    str(IllegalTransition("payment intent", intent.status, attempt.type.value)),
                    type=ErrorType.ILLEGAL_TRANSITION,
                    non_retryable=True,
                )
            if attempt.type is TransactionType.REFUND:
                await _check_refund_fits(session, intent, attempt.amount_in_cents)
            txn = Transaction(
                id=attempt.transaction_id,
                merchant_id=intent.merchant_id,
                payment_intent_id=intent.id,
                type=attempt.type.value,
                amount_in_cents=attempt.amount_in_cents,
                currency=intent.currency,
                status=TransactionStatus.PENDING.value,
                network_reference=attempt.transaction_id,
                parent_reference=attempt.parent_reference,
            )
            session.add(txn)
            return Recorded(intent.status, recorded_transaction(txn))

    @activity.defn
    @refusals_are_final
    async def record_outcome(self, result: Outcome) -> Recorded:
        """Apply the network's answer to a transaction and, where it moves the intent, to the
        intent (amounts, status, event and its webhook deliveries in one database transaction).
        An unknown answer never moves the intent: it is never turned into a guess."""
        async with driver_connection(self._engine) as connection, connection.transaction():
            locked = await lock_payment(connection, result.payment_intent_id, result.transaction_id)
            txn = locked.transaction
            if txn is None:
                raise LookupError(f"transaction {result.transaction_id} was never recorded")
            cause = f"{txn.id}:{result.outcome.value}"
            status_before = txn.status
            applied = not already_applied(txn, result)  # else a retry after the commit
            if applied:
                write = outcome_write(locked, result, cause=cause)
                written = await write_record(connection, write)
                if not written.transaction_moved:  # never under the locks
                    raise IllegalTransition("transaction", status_before, result.outcome.value)
                if write.event is not None and not written.intent_moved:
                    assert write.moved_intent is not None  # an event comes with its move
                    raise IllegalTransition(
                        "payment intent", write.moved_intent[1], result.outcome.value
                    )
                txn.updated_at = written.transaction_updated_at
                deliveries = [d["id"] for d in write.deliveries]
            else:
                # The event of this outcome, if it appended one (a retry finds it by its id).
                deliveries = await deliveries_of_recorded(
                    connection, locked.intent.merchant_id, locked.endpoints, [event_id_for(cause)]
                )
            recorded = Recorded(locked.intent.status, recorded_transaction(txn), deliveries)
        if applied:  # committed now, by this attempt: counted once
            count_recorded_outcome(
                transaction_type=txn.type,
                status_before=status_before,
                outcome=result.outcome,
                intent_status=recorded.status,
                operator_verdict=result.failure_code == OPERATOR_VERDICT,
            )
        return recorded

    @activity.defn
    @refusals_are_final
    async def cancel_payment_intent(self, cancellation: IntentCancellation) -> Recorded:
        """Cancel an intent without a successful charge (nothing to release at the network)."""
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, cancellation.payment_intent_id)
            cause = f"{intent.id}:cancel"
            if not await event_exists(session, event_id_for(cause)):  # else a retry
                await transition_intent(
                    session,
                    intent,
                    IntentAction.CANCEL,
                    cause=cause,
                    transaction_id=None,
                    changes={"cancellation_reason": cancellation.reason},
                )
            return Recorded(
                intent.status,
                None,
                await plan_deliveries(session, intent.merchant_id, [event_id_for(cause)]),
            )

    @activity.defn
    @refusals_are_final
    async def record_reversal_attempt(self, attempt: ReversalAttempt) -> None:
        """Write the reversal's reference on its unsettled charge before the reversal is sent,
        so every reference the network may know is ours. Not a state change (the charge stays
        unsettled until the reversal's answer settles it): no event. Idempotent: the same
        reference again is a no-op; a settled charge, or another reference, is refused."""
        async with driver_connection(self._engine) as connection:
            recorded = await connection.fetchval(
                _RECORD_REVERSAL,
                attempt.transaction_id,
                attempt.payment_intent_id,
                attempt.reversal_reference,
            )
        if recorded is None:
            raise LookupError(
                f"no unsettled charge {attempt.transaction_id} of "
                f"{attempt.payment_intent_id} to reverse under "
                f"{attempt.reversal_reference}"
            )

    @activity.defn
    async def load_payment(self, payment_intent_id: str) -> PaymentSnapshot:
        """The payment as recorded, for a run that opens after earlier runs closed. Read only."""
        async with driver_connection(self._engine) as connection:
            intent, transactions = await read_payment(connection, payment_intent_id)
        return _snapshot(intent, transactions)

    @activity.defn
    @refusals_are_final
    async def flag_for_manual_review(self, flag: ManualReviewFlag) -> None:
        """Mark the intent for operators (`durapay review list`); its status stays `processing`.

        Not a state change of the payment, so no merchant event: the merchant keeps seeing
        `processing`, which is the truth, until the network or an operator settles it.
        """
        async with self._sessions() as session, session.begin():
            opened = await open_manual_review(session, flag.payment_intent_id)
        if opened:
            MANUAL_REVIEWS_OPENED.inc()
        if opened and flag.reason:
            log.error(
                "payment %s needs manual review: %s (%s)",
                flag.payment_intent_id,
                flag.reason,
                flag.transaction_id,
            )
        elif opened:
            log.error(
                "payment %s needs manual review: the outcome of %s is still unknown after "
                "%.0f s of status queries",
                flag.payment_intent_id,
                flag.transaction_id,
                flag.waited_seconds,
            )

    @activity.defn
    @refusals_are_final
    async def record_outcome_discrepancy(self, found: OutcomeDiscrepancy) -> None:
        """Open (once) a discrepancy for operators: the network's late answer contradicts the
        outcome recorded for the transaction. The record is never overwritten by it."""
        async with self._sessions() as session, session.begin():
            txn = await lock_transaction(session, found.transaction_id)
            if txn is None:
                raise LookupError(f"transaction {found.transaction_id} was never recorded")
            opened = await open_discrepancy(
                session,
                kind=DiscrepancyKind.NETWORK_CONTRADICTS_RECORDED_OUTCOME,
                network_reference=txn.network_reference,
                merchant_id=txn.merchant_id,
                payment_intent_id=txn.payment_intent_id,
                transaction_id=txn.id,
                detail={
                    "recorded": found.recorded.value,
                    "network": found.network.value,
                    "transactionStatus": txn.status,
                },
            )
        if opened:
            DISCREPANCIES_OPENED.labels(
                kind=DiscrepancyKind.NETWORK_CONTRADICTS_RECORDED_OUTCOME.value
            ).inc()


# Sets the reference once, on a charge still unsettled; finds it again if already set.
_RECORD_REVERSAL = """
UPDATE transaction
SET reversal_reference = $3,
    updated_at = CASE WHEN reversal_reference IS NULL THEN clock_timestamp() ELSE updated_at END
WHERE id = $1 AND payment_intent_id = $2 AND type = 'charge'
  AND (reversal_reference = $3
       OR (reversal_reference IS NULL AND status IN ('pending', 'timeout')))
RETURNING id
"""


def _check_card_token(locked: LockedPayment) -> None:
    """A charge names a vault token of the intent's own merchant (read from the intent, never
    from the request). Another merchant's token would charge their customer's card; one that
    does not exist would break the foreign key and be retried for ever under the intent's lock.
    Either is refused for good (LookupError: see `refusals_are_final`), and nothing is written."""
    if locked.card_token_owner != locked.intent.merchant_id:  # None: no such token
        # Without the id: it came with the request, so it is not ours to log.
        raise LookupError("the charge's card token is not a card of this payment's merchant")


async def _check_refund_fits(session: AsyncSession, intent: PaymentIntent, amount: int) -> None:
    committed = (
        await session.exec(
            select(func.coalesce(func.sum(Transaction.amount_in_cents), 0)).where(
                Transaction.payment_intent_id == intent.id,
                Transaction.type == TransactionType.REFUND.value,
                col(Transaction.status).in_(OPEN_REFUND_STATUSES),
            )
        )
    ).one()
    if int(committed) + amount > intent.amount_received:
        raise ApplicationError(
            f"refund of {amount} exceeds what is left to refund "
            f"({intent.amount_received - int(committed)})",
            type=ErrorType.AMOUNT_INVALID,
            non_retryable=True,
        )


def _snapshot(intent: IntentRow, transactions: list[TransactionRow]) -> PaymentSnapshot:
    def succeeded(kind: TransactionType) -> TransactionRow | None:
        return next(
            (
                t
                for t in transactions
                if t.type == kind.value and t.status == TransactionStatus.SUCCEEDED.value
            ),
            None,
        )

    charge, capture = succeeded(TransactionType.CHARGE), succeeded(TransactionType.CAPTURE)
    paid = capture or (charge if intent.capture_method == CaptureMethod.AUTOMATIC.value else None)
    unsettled = next((t for t in transactions if t.status in UNSETTLED_STATUSES), None)
    return PaymentSnapshot(
        status=intent.status,
        amount_capturable=intent.amount_capturable,
        amount_received=intent.amount_received,
        amount_refunded=intent.amount_refunded,
        authorization_reference=charge.id if charge else None,
        payment_reference=paid.id if paid else None,
        authorized_at=charge.updated_at.timestamp() if charge and charge.updated_at else None,
        succeeded_at=paid.updated_at.timestamp() if paid and paid.updated_at else None,
        unsettled=UnsettledOperation(
            unsettled.id,
            TransactionType(unsettled.type),
            unsettled.amount_in_cents,
            unsettled.reversal_reference,
        )
        if unsettled
        else None,
        in_manual_review=(
            intent.manual_review_since is not None and intent.manual_review_resolved_at is None
        ),
    )
