from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from sqlmodel import select
from temporalio.client import Client

from api import idempotency
from api.deps import (
    IdempotencyKeyDep,
    MerchantDep,
    OwnedPaymentIntentDep,
    SessionDep,
    StateDep,
    TemporalDep,
)
from api.pagination import newest_first_page
from api.payment_workflow import (
    SentUpdate,
    operation_answer,
    payment_workflow_input,
    payment_workflow_options,
    send_operation,
)
from api.schemas.base import ListOf
from api.schemas.events import EventOut
from api.schemas.payment_intents import (
    PaymentIntentCancel,
    PaymentIntentCapture,
    PaymentIntentCreate,
    PaymentIntentOut,
)
from api.views import event_out, load_payment_intent_out, payment_intent_out
from core.db.queries import append_event, merchant_visible_event
from core.db.tables import Event, PaymentIntent, Transaction
from core.domain import IntentStatus, new_id
from core.settings import Settings
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import CancelInput, CaptureInput, OperationResult

log = logging.getLogger("durapay.api")
router = APIRouter(prefix="/payment-intents", tags=["payment-intents"])


@router.post("", response_model=PaymentIntentOut, status_code=status.HTTP_201_CREATED,
             summary="Create a PaymentIntent (starts its workflow)")
async def create_payment_intent(body: PaymentIntentCreate, merchant: MerchantDep,
                                session: SessionDep, state: StateDep, temporal: TemporalDep,
                                idempotency_key: IdempotencyKeyDep) -> JSONResponse:
    created: list[PaymentIntent] = []

    async def handle() -> tuple[int, dict[str, object]]:
        # Not committed here: the intent, its `payment.created` event and the stored answer to
        # the Idempotency-Key commit together, so a crash can never leave an intent that a
        # retry with the same key would create a second time.
        intent = PaymentIntent(
            id=new_id("pi"), merchant_id=merchant.id, amount_in_cents=body.amount_in_cents,
            currency=body.currency, description=body.description,
            capture_method=body.capture_method, status=IntentStatus.CREATED.value,
            metadata_=body.metadata)
        session.add(intent)
        await session.flush()
        await session.refresh(intent)
        await append_event(session, cause=f"{intent.id}:created", event_type="payment.created",
                           intent=intent, transaction_id=None)
        created.append(intent)
        return 201, payment_intent_out(intent, []).model_dump(mode="json", by_alias=True)

    status_code, response = await idempotency.respond_once(
        session, secret=state.settings.resolved_master_key(), merchant_id=merchant.id,
        key=idempotency_key, endpoint="POST /payment-intents",
        payload=body.model_dump(mode="json"), handle=handle)
    await session.commit()  # without a key, nothing else committed it
    if created:  # not for a replayed answer: that intent's workflow was started the first time
        await _start_workflow(temporal, state.settings, created[0])
    return JSONResponse(response, status_code=status_code)


@router.get("", response_model=ListOf[PaymentIntentOut], summary="List your PaymentIntents")
async def list_payment_intents(
    merchant: MerchantDep, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    starting_after: Annotated[str | None, Query(alias="startingAfter")] = None,
    status_filter: Annotated[IntentStatus | None, Query(alias="status")] = None,
) -> ListOf[PaymentIntentOut]:
    """Newest first. Pass the last id of a page as `startingAfter` to get the next page."""
    filters = [] if status_filter is None else [PaymentIntent.status == status_filter.value]
    page, has_more = await newest_first_page(
        session, PaymentIntent, [PaymentIntent.merchant_id == merchant.id], limit=limit,
        starting_after=starting_after, noun="payment_intent", filters=filters)
    transactions = await _transactions_by_intent(session, [i.id for i in page])
    return ListOf[PaymentIntentOut](
        data=[payment_intent_out(i, transactions.get(i.id, [])) for i in page],
        has_more=has_more)


@router.get("/{id}", response_model=PaymentIntentOut, summary="Retrieve a PaymentIntent")
async def retrieve_payment_intent(intent: OwnedPaymentIntentDep,
                                  session: SessionDep) -> PaymentIntentOut:
    return await load_payment_intent_out(session, intent.id)


OPERATION_RESPONSES = {
    202: {"description": "The network's answer is not known yet: the PaymentIntent as it "
                         "stands; reconciliation settles the operation without client action."},
    400: {"description": "`amountInCents` is more than the payment allows."},
    402: {"description": "The network declined the operation: `card_error`; the error object "
                         "also holds the PaymentIntent under `paymentIntent`."},
    409: {"description": "Not allowed in the intent's status (also once the payment is closed: "
                         "canceled, refunded, refund window over), or an operation is in "
                         "flight."},
}


@router.post("/{id}/capture", response_model=PaymentIntentOut, status_code=status.HTTP_200_OK,
             responses=OPERATION_RESPONSES,  # type: ignore[arg-type]
             summary="Capture an authorized PaymentIntent (all or part)")
async def capture_payment_intent(intent: OwnedPaymentIntentDep, merchant: MerchantDep,
                                 session: SessionDep, state: StateDep, temporal: TemporalDep,
                                 idempotency_key: IdempotencyKeyDep,
                                 body: PaymentIntentCapture | None = None) -> JSONResponse:
    """Captures `amountInCents` (default: everything authorized) of a `requires_capture`
    intent at the network; the rest of the authorization is released. Waits like a charge."""
    request = body or PaymentIntentCapture()
    return await _operate(intent, merchant.id, session, state, temporal, idempotency_key,
                          verb="capture", payload=request.model_dump(mode="json"),
                          update=PaymentIntentWorkflow.capture,
                          argument=CaptureInput(request.amount_in_cents))


@router.post("/{id}/cancel", response_model=PaymentIntentOut, status_code=status.HTTP_200_OK,
             responses=OPERATION_RESPONSES,  # type: ignore[arg-type]
             summary="Cancel a PaymentIntent (voids its authorization)")
async def cancel_payment_intent(intent: OwnedPaymentIntentDep, merchant: MerchantDep,
                                session: SessionDep, state: StateDep, temporal: TemporalDep,
                                idempotency_key: IdempotencyKeyDep,
                                body: PaymentIntentCancel | None = None) -> JSONResponse:
    """An intent without a successful charge is canceled at once; an authorized one
    (`requires_capture`) is voided at the network first. After a capture: 409 (refund it)."""
    request = body or PaymentIntentCancel()
    return await _operate(intent, merchant.id, session, state, temporal, idempotency_key,
                          verb="cancel", payload=request.model_dump(mode="json"),
                          update=PaymentIntentWorkflow.cancel,
                          argument=CancelInput(request.cancellation_reason))


async def _operate(intent: PaymentIntent, merchant_id: str, session: SessionDep,
                   state: StateDep, temporal: Client, idempotency_key: str | None, *,
                   verb: str, payload: object, update: object,
                   argument: object) -> JSONResponse:
    async def handle() -> tuple[int, dict[str, object]]:
        sent = await send_operation(temporal, intent, state.settings, update, argument,
                                    verb=verb, idempotency_key=idempotency_key)
        return await _operation_response(session, intent.id, sent)

    status_code, response = await idempotency.respond_once(
        session, secret=state.settings.resolved_master_key(), merchant_id=merchant_id,
        key=idempotency_key, endpoint=f"POST /payment-intents/{intent.id}/{verb}",
        payload=payload, handle=handle)
    return JSONResponse(response, status_code=status_code)


async def _operation_response(session: SessionDep, intent_id: str,
                              sent: SentUpdate) -> tuple[int, dict[str, object]]:
    """The PaymentIntent as it stands, with the status of this request's own transaction (a
    cancel without an authorization has none): 202 while it is not settled."""
    out = (await load_payment_intent_out(session, intent_id)).model_dump(mode="json",
                                                                          by_alias=True)
    result: OperationResult | None = sent.result
    if result is None:
        return 202, out
    txn = None
    if result.transaction_id is not None:
        txn = (await session.exec(select(Transaction).where(
            Transaction.id == result.transaction_id))).one()
    return operation_answer(txn, out, holder="paymentIntent")


@router.get("/{id}/events", response_model=ListOf[EventOut],
            summary="The intent's audit trail, oldest first")
async def list_payment_intent_events(intent: OwnedPaymentIntentDep,
                                     session: SessionDep) -> ListOf[EventOut]:
    events = (await session.exec(select(Event).where(Event.payment_intent_id == intent.id,
                                                     merchant_visible_event())
                                 .order_by(Event.seq))).all()  # type: ignore[arg-type]
    return ListOf[EventOut](data=[event_out(e) for e in events], has_more=False)


async def _transactions_by_intent(session: SessionDep,
                                  intent_ids: list[str]) -> dict[str, list[Transaction]]:
    if not intent_ids:
        return {}
    rows = (await session.exec(select(Transaction).where(
        Transaction.payment_intent_id.in_(intent_ids))  # type: ignore[attr-defined]
        .order_by(Transaction.created_at, Transaction.id))).all()
    grouped: dict[str, list[Transaction]] = {}
    for txn in rows:
        grouped.setdefault(txn.payment_intent_id, []).append(txn)
    return grouped


# Starting the workflow here is an optimisation (the first charge starts it otherwise), so a
# Temporal outage must not hold the merchant's 201 for the client's whole retry budget.
WORKFLOW_START_WAIT_SECONDS = 2.0


async def _start_workflow(temporal: Client, settings: Settings, intent: PaymentIntent) -> None:
    try:
        async with asyncio.timeout(WORKFLOW_START_WAIT_SECONDS):
            await temporal.start_workflow(PaymentIntentWorkflow.run,
                                          payment_workflow_input(intent, settings),
                                          **payment_workflow_options(intent, settings))
    except Exception as error:  # noqa: BLE001
        # The intent is committed; its first charge starts the workflow (update-with-start).
        log.warning("workflow start for %s deferred: %s", intent.id, type(error).__name__)
