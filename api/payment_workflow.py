"""How the API starts an intent's workflow: one place for its id, input, policies and the
search attributes operators filter on, shared by intent creation and update-with-start."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlmodel import select
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
from temporalio.service import RPCError

from api.errors import ApiError, CardError, ConflictError, InvalidRequestError
from api.views import transaction_out
from core import search_attributes
from core.db.tables import PaymentIntent, Transaction
from core.domain import CaptureMethod, TransactionStatus, TransactionType
from core.errors import ErrorType
from core.settings import Settings
from workflows.payment_intent import PaymentIntentInput, PaymentIntentWorkflow
from workflows.payment_messages import LifecyclePolicy, OperationResult, ReconcilePolicy


def payment_workflow_input(intent: PaymentIntent, settings: Settings) -> PaymentIntentInput:
    return PaymentIntentInput(
        payment_intent_id=intent.id, merchant_id=intent.merchant_id,
        amount_in_cents=intent.amount_in_cents, currency=intent.currency,
        capture_method=CaptureMethod(intent.capture_method),
        reconcile=ReconcilePolicy(
            first_delay_seconds=settings.reconcile_first_delay_seconds,
            max_delay_seconds=settings.reconcile_max_delay_seconds,
            horizon_seconds=settings.reconcile_horizon_seconds),
        lifecycle=LifecyclePolicy(
            authorization_expiry_seconds=settings.authorization_expiry_seconds,
            refund_window_seconds=settings.refund_window_seconds))


def payment_workflow_options(intent: PaymentIntent, settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `start_workflow` / `WithStartWorkflowOperation`."""
    return {
        "id": intent.id,
        "task_queue": settings.task_queue,
        # A closed payment's id is never reused: a second run would not know the first one's
        # money. A start racing an update-with-start attaches to the running one.
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": TypedSearchAttributes([
            SearchAttributePair(search_attributes.MERCHANT_ID, intent.merchant_id),
            SearchAttributePair(search_attributes.STATUS, intent.status),
            SearchAttributePair(search_attributes.AMOUNT, intent.amount_in_cents),
            SearchAttributePair(search_attributes.CURRENCY, intent.currency),
            SearchAttributePair(search_attributes.MANUAL_REVIEW, False),
        ]),
    }


async def send_operation(temporal: Client, intent: PaymentIntent, settings: Settings,
                         update: Any, request: Any, *, verb: str,
                         idempotency_key: str | None) -> OperationResult | None:
    """Send a capture/cancel/refund Update (update-with-start, like a charge) and wait, bounded,
    for its answer; None when the wait ran out (the operation goes on: answer 202).

    The update id is `<verb>:<Idempotency-Key>`, so a retried request joins the same update.
    The workflow's refusals become API errors: 409 for the state machine or an operation in
    flight, 400 `amountInCents` for an amount beyond what the payment allows.
    """
    start = WithStartWorkflowOperation(
        PaymentIntentWorkflow.run, payment_workflow_input(intent, settings),
        **payment_workflow_options(intent, settings))
    try:
        async with asyncio.timeout(settings.charge_wait_seconds):
            handle = await temporal.start_update_with_start_workflow(
                update, request, start_workflow_operation=start,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                id=f"{verb}:{idempotency_key}" if idempotency_key else None)
            return await handle.result()  # type: ignore[no-any-return]
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        kind = cause.type if isinstance(cause, ApplicationError) else None
        if kind == ErrorType.ATTEMPT_IN_FLIGHT:
            raise ConflictError("attempt_in_flight", "An operation on this PaymentIntent is in "
                                "flight; retry once it is settled.") from None
        if kind == ErrorType.ILLEGAL_TRANSITION:
            raise ConflictError("payment_intent_unexpected_state",
                                f"Cannot {verb} this PaymentIntent: {cause.message}.") from None
        if kind == ErrorType.AMOUNT_INVALID:
            raise InvalidRequestError("amount_too_large", f"Cannot {verb} that amount: "
                                      f"{cause.message}.", "amountInCents") from None
        raise
    except RPCError as error:
        if "already" in str(error).lower() or "completed" in str(error).lower():
            raise unexpected_state(verb, "closed") from None
        raise
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        return None


def unexpected_state(verb: str, current: str) -> ConflictError:
    return ConflictError("payment_intent_unexpected_state",
                         f"Cannot {verb} this PaymentIntent in status '{current}'.")


async def transaction_answer(session: AsyncSession, intent_id: str, kind: TransactionType,
                             transaction_id: str | None) -> tuple[int, dict[str, Any]]:
    """The answer to a charge or refund: its Transaction (the intent's newest of that type
    when the wait ran out before the workflow named it), with 200/202/402 as below."""
    query = select(Transaction).where(Transaction.payment_intent_id == intent_id,
                                      Transaction.type == kind.value)
    if transaction_id is not None:
        query = query.where(Transaction.id == transaction_id)
    txn = (await session.exec(query.order_by(Transaction.created_at.desc())  # type: ignore[attr-defined]
                              .execution_options(populate_existing=True))).first()
    if txn is None:
        raise ApiError("network_answer_pending", f"The {kind.value} was accepted but not yet "
                       "recorded; retry with the same Idempotency-Key.", status=503)
    out = transaction_out(txn).model_dump(mode="json", by_alias=True)
    return operation_answer(txn, out, holder="transaction")


def operation_answer(txn: Transaction | None, body: dict[str, Any], *,
                     holder: str) -> tuple[int, dict[str, Any]]:
    """200 when done, 202 while the network's answer is unknown (reconciliation goes on), 402
    `card_error` when the network declined the operation (the body goes under `holder`)."""
    if txn is None or txn.status == TransactionStatus.SUCCEEDED.value:
        return 200, body
    if txn.status == TransactionStatus.FAILED.value:
        declined = txn.decline_code is not None
        raise CardError("card_declined" if declined else (txn.failure_code or "processing_error"),
                        f"The card network declined the {txn.type} ({txn.decline_code})."
                        if declined else f"The card network could not process the {txn.type}; "
                        "nothing changed.", extra={"declineCode": txn.decline_code, holder: body})
    return 202, body
