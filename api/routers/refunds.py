"""Refunds of a PaymentIntent: transactions of type `refund`, sent by the intent's workflow."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from api import idempotency
from api.deps import (
    IdempotencyKeyDep,
    MerchantDep,
    OwnedPaymentIntentDep,
    SessionDep,
    StateDep,
    TemporalDep,
)
from api.payment_workflow import pending_transaction, send_operation, transaction_answer
from api.schemas.payment_intents import RefundCreate
from api.schemas.transactions import TransactionOut
from core.domain import TransactionType
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import RefundInput

router = APIRouter(prefix="/payment-intents", tags=["refunds"])

REFUND_RESPONSES = {
    202: {"description": "The network's answer is not known yet (transaction `timeout`), or the "
                         "wait ran out first (`pending`, e.g. queued behind another refund): "
                         "always this request's own refund; reconciliation settles it without "
                         "any client action."},
    400: {"description": "`amountInCents` is more than what is left to refund."},
    402: {"description": "The network declined the refund: `card_error`; the error object "
                         "also holds the Transaction under `transaction`."},
    409: {"description": "Nothing captured to refund (not succeeded yet, canceled, refunded, "
                         "refund window over), or an operation's outcome is still unknown."},
}


@router.post("/{id}/refunds", response_model=TransactionOut, status_code=status.HTTP_200_OK,
             responses=REFUND_RESPONSES,  # type: ignore[arg-type]
             summary="Refund a PaymentIntent (all or part)")
async def create_refund(intent: OwnedPaymentIntentDep, merchant: MerchantDep,
                        session: SessionDep, state: StateDep, temporal: TemporalDep,
                        idempotency_key: IdempotencyKeyDep,
                        body: RefundCreate | None = None) -> JSONResponse:
    """Refunds `amountInCents` (default: all that is left). Several partial refunds may add up
    to the amount received, never more, even when sent at once: they are applied one after
    the other, and one that no longer fits gets 400."""
    request = body or RefundCreate()

    async def handle() -> tuple[int, dict[str, object]]:
        sent = await send_operation(temporal, intent, state.settings,
                                    PaymentIntentWorkflow.refund,
                                    RefundInput(request.amount_in_cents), verb="refund",
                                    idempotency_key=idempotency_key)
        # Queued behind another operation: without an amount, it refunds what is left at its
        # turn, which is what is left now unless the refund ahead of it succeeds.
        return await transaction_answer(session, sent, not_recorded_yet=pending_transaction(
            sent.transaction_id, intent, TransactionType.REFUND,
            request.amount_in_cents or intent.amount_received - intent.amount_refunded))

    status_code, response = await idempotency.respond_once(
        session, secret=state.settings.resolved_master_key(), merchant_id=merchant.id,
        key=idempotency_key, endpoint=f"POST /payment-intents/{intent.id}/refunds",
        payload=request.model_dump(mode="json"), handle=handle)
    return JSONResponse(response, status_code=status_code)

