from __future__ import annotations

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
from api.errors import InvalidRequestError
from api.payment_workflow import payment_workflow_input, payment_workflow_options
from api.schemas.base import ListOf
from api.schemas.events import EventOut
from api.schemas.payment_intents import PaymentIntentCreate, PaymentIntentOut
from api.views import event_out, load_payment_intent_out, payment_intent_out
from core.db.queries import append_event, merchant_visible_event, newest_first_after
from core.db.tables import Event, PaymentIntent, Transaction
from core.domain import IntentStatus, new_id
from core.settings import Settings
from workflows.payment_intent import PaymentIntentWorkflow

log = logging.getLogger("durapay.api")
router = APIRouter(prefix="/payment-intents", tags=["payment-intents"])


@router.post("", response_model=PaymentIntentOut, status_code=status.HTTP_201_CREATED,
             summary="Create a PaymentIntent (starts its workflow)")
async def create_payment_intent(body: PaymentIntentCreate, merchant: MerchantDep,
                                session: SessionDep, state: StateDep, temporal: TemporalDep,
                                idempotency_key: IdempotencyKeyDep) -> JSONResponse:
    endpoint = "POST /payment-intents"
    if idempotency_key:
        fingerprint = idempotency.request_fingerprint(
            state.settings.resolved_master_key(), endpoint, body.model_dump(mode="json"))
        stored = await idempotency.claim(session, merchant_id=merchant.id, key=idempotency_key,
                                         endpoint=endpoint, fingerprint=fingerprint)
        if stored is not None:
            return JSONResponse(stored.body, status_code=stored.status)
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
    await session.commit()
    response = payment_intent_out(intent, []).model_dump(mode="json", by_alias=True)
    if idempotency_key:
        await idempotency.store(session, merchant_id=merchant.id, key=idempotency_key,
                                status=201, body=response)
    await _start_workflow(temporal, state.settings, intent)
    return JSONResponse(response, status_code=201)


@router.get("", response_model=ListOf[PaymentIntentOut], summary="List your PaymentIntents")
async def list_payment_intents(
    merchant: MerchantDep, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    starting_after: Annotated[str | None, Query(alias="startingAfter")] = None,
    status_filter: Annotated[IntentStatus | None, Query(alias="status")] = None,
) -> ListOf[PaymentIntentOut]:
    """Newest first. Pass the last id of a page as `startingAfter` to get the next page."""
    cursor = None
    if starting_after:
        anchor = (await session.exec(select(PaymentIntent).where(
            PaymentIntent.id == starting_after, PaymentIntent.merchant_id == merchant.id))).first()
        if anchor is None:
            raise InvalidRequestError("resource_missing",
                                      f"No such payment_intent: '{starting_after}'",
                                      "startingAfter")
        cursor = (anchor.created_at, anchor.id)
    query = select(PaymentIntent).where(PaymentIntent.merchant_id == merchant.id,
                                        newest_first_after(PaymentIntent, cursor))
    if status_filter is not None:
        query = query.where(PaymentIntent.status == status_filter.value)
    rows = (await session.exec(query.order_by(PaymentIntent.created_at.desc(),  # type: ignore[attr-defined]
                                              PaymentIntent.id.desc())  # type: ignore[attr-defined]
                               .limit(limit + 1))).all()
    page = list(rows[:limit])
    transactions = await _transactions_by_intent(session, [i.id for i in page])
    return ListOf[PaymentIntentOut](
        data=[payment_intent_out(i, transactions.get(i.id, [])) for i in page],
        has_more=len(rows) > limit)


@router.get("/{id}", response_model=PaymentIntentOut, summary="Retrieve a PaymentIntent")
async def retrieve_payment_intent(intent: OwnedPaymentIntentDep,
                                  session: SessionDep) -> PaymentIntentOut:
    return await load_payment_intent_out(session, intent.id)


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


async def _start_workflow(temporal: Client, settings: Settings, intent: PaymentIntent) -> None:
    try:
        await temporal.start_workflow(PaymentIntentWorkflow.run,
                                      payment_workflow_input(intent, settings),
                                      **payment_workflow_options(intent, settings))
    except Exception as error:  # noqa: BLE001
        # The intent is committed; its first charge starts the workflow (update-with-start).
        log.warning("workflow start for %s deferred: %s", intent.id, type(error).__name__)
