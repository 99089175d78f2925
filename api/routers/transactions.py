from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from sqlmodel import select
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from api import idempotency
from api.deps import (
    IdempotencyKeyDep,
    MerchantDep,
    OwnedPaymentIntentDep,
    SessionDep,
    StateDep,
    TemporalDep,
)
from api.errors import ApiError, CardError, ConflictError, InvalidRequestError
from api.payment_workflow import payment_workflow_input, payment_workflow_options
from api.schemas.transactions import TransactionCreate, TransactionOut
from api.views import transaction_out
from core.cards import card_brand, card_problem
from core.db.tables import CardToken, PaymentIntent, Transaction
from core.domain import CardSummary, TransactionStatus, new_id
from core.errors import ErrorType
from core.state_machine import can_start_charge
from workflows.payment_intent import ChargeInput, ChargeResult, PaymentIntentWorkflow

router = APIRouter(prefix="/payment-intents", tags=["transactions"])

CHARGE_RESPONSES = {
    202: {"description": "The network's answer is not known yet (transaction `timeout`); "
                         "reconciliation settles it without any client action."},
    402: {"description": "Declined: `card_error` with `declineCode`; the error object also "
                         "holds the failed Transaction under `transaction`."},
    409: {"description": "An attempt is in flight, or the intent takes no new charge."},
}


@router.post("/{id}/transactions", response_model=TransactionOut,
             status_code=status.HTTP_200_OK, responses=CHARGE_RESPONSES,  # type: ignore[arg-type]
             summary="Charge a card on the PaymentIntent")
async def create_transaction(body: TransactionCreate, intent: OwnedPaymentIntentDep,
                             merchant: MerchantDep, session: SessionDep, state: StateDep,
                             temporal: TemporalDep,
                             idempotency_key: IdempotencyKeyDep) -> JSONResponse:
    """Waits (about 10 s at most) for the card network's first answer.

    The card is validated (Luhn, length, expiry, CVC) before anything is stored or sent; the
    number is then kept only encrypted in the vault, and the workflow sees a token and last4.
    """
    card = body.card
    problem = card_problem(number=card.number, exp_month=card.exp_month,
                           exp_year=card.exp_year, cvc=card.cvc, today=datetime.now(UTC).date())
    if problem is not None:
        raise InvalidRequestError(problem.code, problem.message, problem.param)
    endpoint = f"POST /payment-intents/{intent.id}/transactions"
    if idempotency_key:
        fingerprint = idempotency.request_fingerprint(
            state.settings.resolved_master_key(), endpoint, body.model_dump(mode="json"))
        stored = await idempotency.claim(session, merchant_id=merchant.id, key=idempotency_key,
                                         endpoint=endpoint, fingerprint=fingerprint)
        if stored is not None:
            return JSONResponse(stored.body, status_code=stored.status)
    try:
        status_code, response = await _charge(body, intent, session, state, temporal,
                                              idempotency_key)
    except ApiError as error:
        if idempotency_key and error.status in (409, 503):
            await idempotency.release(session, merchant_id=merchant.id, key=idempotency_key)
        elif idempotency_key:
            await idempotency.store(session, merchant_id=merchant.id, key=idempotency_key,
                                    status=error.status, body=error.body())
        raise
    except Exception:
        # An unexpected failure stores no answer: the retry with the same key must be able to
        # try again (the update id `charge:<key>` still joins an attempt already started).
        if idempotency_key:
            await idempotency.release(session, merchant_id=merchant.id, key=idempotency_key)
        raise
    if idempotency_key:
        await idempotency.store(session, merchant_id=merchant.id, key=idempotency_key,
                                status=status_code, body=response)
    return JSONResponse(response, status_code=status_code)


async def _charge(body: TransactionCreate, intent: PaymentIntent, session: SessionDep,
                  state: StateDep, temporal: TemporalDep,
                  idempotency_key: str | None) -> tuple[int, dict[str, object]]:
    if not can_start_charge(intent.status):
        raise _not_chargeable(intent.status)
    token = _tokenize(body, intent, state)
    session.add(token)
    await session.commit()
    charge = ChargeInput(card_token_id=token.id, card=CardSummary(
        brand=token.brand, last4=token.last4, exp_month=token.exp_month,
        exp_year=token.exp_year))
    start = WithStartWorkflowOperation(
        PaymentIntentWorkflow.run, payment_workflow_input(intent, state.settings),
        **payment_workflow_options(intent, state.settings))
    result: ChargeResult | None = None
    try:
        async with asyncio.timeout(state.settings.charge_wait_seconds):
            handle = await temporal.start_update_with_start_workflow(
                PaymentIntentWorkflow.confirm_charge, charge, start_workflow_operation=start,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                id=f"charge:{idempotency_key}" if idempotency_key else None)
            result = await handle.result()
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == ErrorType.ATTEMPT_IN_FLIGHT:
            raise ConflictError("attempt_in_flight",
                                "A charge attempt on this PaymentIntent is in flight.") from None
        if isinstance(cause, ApplicationError) and cause.type == ErrorType.ILLEGAL_TRANSITION:
            raise _not_chargeable(intent.status) from None
        raise
    except RPCError as error:
        if "already" in str(error).lower() or "completed" in str(error).lower():
            raise _not_chargeable("closed") from None
        raise
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        # Our wait is over, not the charge: the client turns the cancelled wait into its own
        # error. Answer 202 with the transaction as it stands; reconciliation goes on.
        result = None
    return await _charge_response(session, intent.id, result)


async def _charge_response(session: SessionDep, intent_id: str,
                           result: ChargeResult | None) -> tuple[int, dict[str, object]]:
    query = select(Transaction).where(Transaction.payment_intent_id == intent_id)
    if result is not None:
        query = query.where(Transaction.id == result.transaction_id)
    txn = (await session.exec(query.order_by(Transaction.created_at.desc())  # type: ignore[attr-defined]
                              .execution_options(populate_existing=True))).first()
    if txn is None:
        raise ApiError("network_answer_pending", "The charge was accepted but not yet recorded; "
                       "retry with the same Idempotency-Key.", status=503)
    out = transaction_out(txn).model_dump(mode="json", by_alias=True)
    if txn.status == TransactionStatus.SUCCEEDED.value:
        return 200, out
    if txn.status == TransactionStatus.FAILED.value:
        raise CardError("card_declined" if txn.decline_code else (txn.failure_code or
                        "processing_error"),
                        "The card was declined." if txn.decline_code else
                        "The card network could not process the charge; nothing was charged.",
                        extra={"declineCode": txn.decline_code, "transaction": out})
    return 202, out  # pending or timeout: reconciliation goes on in the workflow


def _tokenize(body: TransactionCreate, intent: PaymentIntent, state: StateDep) -> CardToken:
    token_id = new_id("card")
    number = body.card.number
    return CardToken(
        id=token_id, merchant_id=intent.merchant_id,
        pan_ciphertext=state.cipher.encrypt(number.encode(), context=token_id),
        brand=card_brand(number), last4=number[-4:], exp_month=body.card.exp_month,
        exp_year=body.card.exp_year)


def _not_chargeable(current: str) -> ConflictError:
    return ConflictError("payment_intent_unexpected_state",
                         f"This PaymentIntent takes no new charge in status '{current}'.")
