"""How the API sends an operation to an intent's workflow: one place for the run's id, input,
policies and the search attributes operators filter on, for update-with-start (every
operation opens a run when none is open), and for turning the workflow's answer into the
API's."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError

from api.errors import (
    CardError,
    ConflictError,
    InvalidRequestError,
    service_unavailable,
)
from api.schemas.transactions import TransactionOut
from api.views import TransactionView, transaction_out
from core import search_attributes
from core.db.intent_operations import IntentSnapshot
from core.db.payment_records import recorded_transaction
from core.db.tables import Transaction
from core.domain import (
    CaptureMethod,
    CardSummary,
    IntentStatus,
    RecordedTransaction,
    TransactionStatus,
    TransactionType,
    transaction_id_for,
    utcnow,
)
from core.errors import ErrorType
from core.settings import Settings
from core.state_machine import is_final
from core.telemetry import annotate_current_span
from core.webhooks import schedule_from
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import (
    LifecyclePolicy,
    OperationResult,
    PaymentIntentInput,
    ReconcilePolicy,
    addressed,
)


def payment_workflow_input(intent: IntentSnapshot, settings: Settings) -> PaymentIntentInput:
    return PaymentIntentInput(
        payment_intent_id=intent.id,
        merchant_id=intent.merchant_id,
        amount_in_cents=intent.amount_in_cents,
        currency=intent.currency,
        capture_method=CaptureMethod(intent.capture_method),
        reconcile=ReconcilePolicy(
            first_delay_seconds=settings.reconcile_first_delay_seconds,
            max_delay_seconds=settings.reconcile_max_delay_seconds,
            horizon_seconds=settings.reconcile_horizon_seconds,
            not_found_safe_age_seconds=settings.reconcile_not_found_safe_age_seconds,
            reversals=settings.network_reversals,
            reversal_after_seconds=settings.reconcile_reversal_after_seconds,
        ),
        lifecycle=LifecyclePolicy(
            authorization_expiry_seconds=settings.authorization_expiry_seconds,
            refund_window_seconds=settings.refund_window_seconds,
        ),
        webhooks=schedule_from(settings),
    )


def payment_workflow_options(intent: IntentSnapshot, settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `WithStartWorkflowOperation`."""
    return {
        "id": intent.id,
        "task_queue": settings.task_queue,
        # A run ends once its payment is at rest; the next operation opens a new run under the
        # same id, which reads the payment from the database. While a run is open, every
        # operation joins it.
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(search_attributes.MERCHANT_ID, intent.merchant_id),
                SearchAttributePair(search_attributes.STATUS, intent.status),
                SearchAttributePair(search_attributes.AMOUNT, intent.amount_in_cents),
                SearchAttributePair(search_attributes.CURRENCY, intent.currency),
                SearchAttributePair(search_attributes.MANUAL_REVIEW, False),
            ]
        ),
    }


@dataclass
class SentUpdate:
    """What the API knows after sending an Update: the transaction it creates (its id is derived
    from the Update's id, so it is known before the workflow records it) and the workflow's
    answer, or None when the bounded wait ran out (the operation goes on: answer 202)."""

    transaction_id: str
    result: Any | None


def update_id_for(verb: str, idempotency_key: str | None) -> str:
    """`<verb>:<Idempotency-Key>`, so a retried request joins the same Update (and names the same
    transaction); without a key, a fresh id: every request is a new operation."""
    return f"{verb}:{idempotency_key}" if idempotency_key else f"{verb}:{uuid.uuid4().hex}"


async def send_operation(
    temporal: Client,
    session: AsyncSession,
    intent: IntentSnapshot,
    settings: Settings,
    update: Any,
    request: Any,
    *,
    verb: str,
    idempotency_key: str | None,
) -> SentUpdate:
    """Send a charge/capture/cancel/refund Update (update-with-start: it joins the payment's
    open run or opens one) and wait, bounded, for its answer.

    The workflow's refusals become API errors: 409 for the state machine (a canceled or
    refunded payment without asking Temporal) or an operation in flight, 400 `amountInCents`
    for an amount beyond what the payment allows. Except for this Idempotency-Key's own
    operation: when the state machine refuses a retry because the first request's Update ran
    and settled (its answer lost: it was a 503), the retry gets that operation's transaction.
    """
    if is_final(intent.status):
        # Canceled or refunded: nothing can happen any more, so no workflow run is opened.
        return await _settled_or_refused(session, intent, verb, idempotency_key)
    update_id = update_id_for(verb, idempotency_key)
    sent = SentUpdate(transaction_id_for(intent.id, update_id), None)
    annotate_current_span(
        merchant_id=intent.merchant_id,
        payment_intent_id=intent.id,
        transaction_id=sent.transaction_id,
    )  # the request's server span
    accepted = False
    start = WithStartWorkflowOperation(
        PaymentIntentWorkflow.run,
        payment_workflow_input(intent, settings),
        **payment_workflow_options(intent, settings),
    )
    request = addressed(request, update, payment_intent_id=intent.id, update_id=update_id)
    try:
        async with asyncio.timeout(settings.charge_wait_seconds):
            handle = await temporal.start_update_with_start_workflow(
                update,
                request,
                start_workflow_operation=start,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                id=update_id,
            )
            accepted = True
            sent.result = await handle.result()
            return sent
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        kind = cause.type if isinstance(cause, ApplicationError) else None
        if kind == ErrorType.ATTEMPT_IN_FLIGHT:
            raise ConflictError(
                "attempt_in_flight",
                "An operation on this PaymentIntent is in flight; retry once it is settled.",
            ) from None
        if kind == ErrorType.ILLEGAL_TRANSITION:
            settled = await settled_by_key(session, intent.id, verb, idempotency_key)
            if settled is not None:
                return _settled_update(intent, settled)
            assert isinstance(cause, ApplicationError)  # `kind` is set for those only
            raise ConflictError(
                "payment_intent_unexpected_state",
                f"Cannot {verb} this PaymentIntent: {cause.message}.",
            ) from None
        if kind == ErrorType.AMOUNT_INVALID:
            assert isinstance(cause, ApplicationError)
            raise InvalidRequestError(
                "amount_too_large", f"Cannot {verb} that amount: {cause.message}.", "amountInCents"
            ) from None
        raise
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        if not accepted:
            # Temporal did not confirm it has the operation (an outage): a 202 would be stored
            # under the Idempotency-Key for an operation that may never run. 503: the retry
            # (same key, same Update id) joins it if it did arrive, or sends it.
            raise service_unavailable() from None
        return sent
    finally:
        _forget_start_failure(start)


# The transaction each operation's Update records (a cancel records one only when it voids).
OPERATION_TRANSACTION_TYPES = {
    "charge": TransactionType.CHARGE,
    "capture": TransactionType.CAPTURE,
    "cancel": TransactionType.VOID,
    "refund": TransactionType.REFUND,
}


async def settled_by_key(
    session: AsyncSession, intent_id: str, verb: str, idempotency_key: str | None
) -> Transaction | None:
    """The settled transaction this Idempotency-Key's `verb` Update recorded on the intent, if
    any: its id derives from the key, as the workflow names it (`transaction_id_for`)."""
    if idempotency_key is None:
        return None
    transaction_id = transaction_id_for(intent_id, update_id_for(verb, idempotency_key))
    return (
        await session.exec(
            select(Transaction).where(
                Transaction.id == transaction_id,
                Transaction.payment_intent_id == intent_id,
                Transaction.type == OPERATION_TRANSACTION_TYPES[verb].value,
                col(Transaction.status).in_(
                    (TransactionStatus.SUCCEEDED.value, TransactionStatus.FAILED.value)
                ),
            )
        )
    ).first()


async def _settled_or_refused(
    session: AsyncSession, intent: IntentSnapshot, verb: str, idempotency_key: str | None
) -> SentUpdate:
    settled = await settled_by_key(session, intent.id, verb, idempotency_key)
    if settled is None:
        raise unexpected_state(verb, intent.status)
    return _settled_update(intent, settled)


def _settled_update(intent: IntentSnapshot, settled: Transaction) -> SentUpdate:
    """The answer of an Update that ran before, as if this request had waited for it."""
    return SentUpdate(
        settled.id, OperationResult(IntentStatus(intent.status), recorded_transaction(settled))
    )


def _forget_start_failure(start: WithStartWorkflowOperation[Any, Any]) -> None:
    """A failed update-with-start also fails the start operation's handle, which nobody awaits
    here; reading it keeps asyncio from logging "Future exception was never retrieved"."""
    handle = getattr(start, "_workflow_handle", None)  # SDK internals: only read, never set
    if isinstance(handle, asyncio.Future) and handle.done() and not handle.cancelled():
        handle.exception()


def pending_transaction(
    transaction_id: str,
    intent: IntentSnapshot,
    kind: TransactionType,
    amount_in_cents: int,
    card: CardSummary | None = None,
) -> TransactionView:
    """The transaction an Update creates, as it stands before the workflow has recorded it
    (`pending`): what a 202 answers with when the wait runs out first."""
    now = utcnow()
    return TransactionView(
        id=transaction_id,
        merchant_id=intent.merchant_id,
        payment_intent_id=intent.id,
        type=kind.value,
        amount_in_cents=amount_in_cents,
        currency=intent.currency,
        status=TransactionStatus.PENDING.value,
        network_reference=transaction_id,
        card_brand=card.brand if card else None,
        card_last4=card.last4 if card else None,
        card_exp_month=card.exp_month if card else None,
        card_exp_year=card.exp_year if card else None,
        created_at=now,
        updated_at=now,
    )


def unexpected_state(verb: str, current: str) -> ConflictError:
    return ConflictError(
        "payment_intent_unexpected_state",
        f"Cannot {verb} this PaymentIntent in status '{current}'.",
    )


def transaction_answer(
    sent: SentUpdate, *, not_recorded_yet: TransactionView
) -> tuple[int, TransactionOut]:
    """The answer to a charge or refund: the Transaction this request's Update creates, never
    another one, as the workflow reports it recorded (no second read of the database). When
    the wait ran out first, or the answer could not be recorded, it is `not_recorded_yet`
    (the same id, `pending`), with 202."""
    recorded = sent.result.transaction if sent.result is not None else None
    return transaction_status_and_out(
        not_recorded_yet if recorded is None else as_recorded(not_recorded_yet, recorded)
    )


def transaction_status_and_out(txn: Transaction | TransactionView) -> tuple[int, TransactionOut]:
    """A charge or refund's answer for `txn`: 200, 202 or (raised) 402, and its body."""
    out = transaction_out(txn)
    status, _ = operation_answer(
        txn, out.model_dump(mode="json", by_alias=True), holder="transaction"
    )
    return status, out


def as_recorded(pending: TransactionView, recorded: RecordedTransaction) -> TransactionView:
    """The pending transaction the API built, with what the database recorded for it (its
    times only where the workflow knows them: not for an answer it could not record)."""
    recorded_times: dict[str, Any] = {
        name: datetime.fromtimestamp(value, UTC)
        for name, value in (
            ("created_at", recorded.created_at),
            ("updated_at", recorded.updated_at),
        )
        if value is not None
    }
    return dataclasses.replace(
        pending,
        status=recorded.status,
        amount_in_cents=recorded.amount_in_cents,
        decline_code=recorded.decline_code,
        failure_code=recorded.failure_code,
        reconciled=recorded.reconciled,
        **recorded_times,
    )


def operation_answer(
    txn: Transaction | TransactionView | RecordedTransaction | None,
    body: dict[str, Any],
    *,
    holder: str,
) -> tuple[int, dict[str, Any]]:
    """200 when done, 202 while the network's answer is unknown (reconciliation goes on), 402
    `card_error` when the network declined the operation (the body goes under `holder`)."""
    if txn is None or txn.status == TransactionStatus.SUCCEEDED.value:
        return 200, body
    if txn.status == TransactionStatus.FAILED.value:
        declined = txn.decline_code is not None
        raise CardError(
            "card_declined" if declined else (txn.failure_code or "processing_error"),
            f"The card network declined the {txn.type} ({txn.decline_code})."
            if declined
            else f"The card network could not process the {txn.type}; nothing changed.",
            extra={"declineCode": txn.decline_code, holder: body},
        )
    return 202, body
