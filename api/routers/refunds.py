"""Refunds of a PaymentIntent: transactions of type `refund`, sent by the intent's workflow."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from api.deps import OwnedPaymentIntentDep, SessionDep, StateDep, TemporalDep
from api.idempotency import IdempotentRoute, idempotent
from api.openapi import errors
from api.payment_workflow import pending_transaction, send_operation, transaction_answer
from api.schemas.payment_intents import RefundCreate
from api.schemas.transactions import TransactionOut
from core.domain import TransactionType
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import RefundInput

router = APIRouter(prefix="/payment-intents", tags=["refunds"], route_class=IdempotentRoute)

REFUND_RESPONSES = errors(
    202,
    400,
    401,
    402,
    404,
    409,
    429,
    503,
    card_error_holds="transaction",
    described={
        202: "The network's answer is not known yet (transaction `timeout`), or the wait ran "
        "out first (`pending`, e.g. queued behind another refund): always this request's "
        "own refund; reconciliation settles it without any client action.",
        400: "`amountInCents` is more than what is left to refund, or the body is invalid.",
        402: "The network declined the refund: `card_error`; the error object also holds the "
        "Transaction under `transaction`.",
        409: "Nothing captured to refund (not succeeded yet, canceled, refunded, refund window "
        "over), an operation's outcome is still unknown, or a request with this "
        "Idempotency-Key is still running.",
    },
)


@router.post(
    "/{id}/refunds",
    response_model=TransactionOut,
    status_code=status.HTTP_200_OK,
    operation_id="payment-intents-refunds-create",
    responses=REFUND_RESPONSES,
    summary="Refund a PaymentIntent (all or part)",
)
async def create_refund(
    intent: OwnedPaymentIntentDep,
    session: SessionDep,
    state: StateDep,
    response: Response,
    idempotency_key: Annotated[str | None, idempotent(RefundCreate, optional=True)],
    temporal: TemporalDep,
    body: RefundCreate | None = None,
) -> TransactionOut:
    """Refunds `amountInCents` (default: all that is left). Several partial refunds may add up
    to the amount received, never more, even when sent at once: they are applied one after
    the other, and one that no longer fits gets 400."""
    request = body or RefundCreate()
    sent = await send_operation(
        temporal,
        session,
        intent,
        state.settings,
        PaymentIntentWorkflow.refund,
        RefundInput(request.amount_in_cents),
        verb="refund",
        idempotency_key=idempotency_key,
    )
    # Queued behind another operation: without an amount, it refunds what is left at its
    # turn, which is what is left now unless the refund ahead of it succeeds.
    response.status_code, answer = transaction_answer(
        sent,
        not_recorded_yet=pending_transaction(
            sent.transaction_id,
            intent,
            TransactionType.REFUND,
            request.amount_in_cents or intent.amount_received - intent.amount_refunded,
        ),
    )
    return answer
