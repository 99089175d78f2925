from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Response, status
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.deps import MerchantDep, OwnedPaymentIntentDep, SessionDep, StateDep, TemporalDep
from api.errors import NotFoundError
from api.idempotency import IdempotentRoute, idempotent
from api.openapi import errors
from api.pagination import newest_first_page
from api.payment_workflow import SentUpdate, operation_answer, send_operation
from api.schemas.base import ListOf
from api.schemas.events import EventOut
from api.schemas.payment_intents import (
    PaymentIntentCancel,
    PaymentIntentCapture,
    PaymentIntentCreate,
    PaymentIntentOut,
)
from api.views import event_out, load_payment_intent_out, payment_intent_out
from api.webhook_workflow import start_event_deliveries
from core.db.intent_writes import insert_payment_intent
from core.db.queries import merchant_visible_event
from core.db.tables import Event, PaymentIntent, Transaction
from core.domain import IntentStatus, new_id
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import CancelInput, CaptureInput

log = logging.getLogger("durapay.api")
router = APIRouter(prefix="/payment-intents", tags=["payment-intents"], route_class=IdempotentRoute)


@router.post(
    "",
    response_model=PaymentIntentOut,
    status_code=status.HTTP_201_CREATED,
    operation_id="payment-intents-create",
    responses=errors(
        400,
        401,
        409,
        429,
        503,
        described={409: "A request with this Idempotency-Key is still running."},
    ),
    summary="Create a PaymentIntent",
)
async def create_payment_intent(
    body: PaymentIntentCreate,
    merchant: MerchantDep,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
    temporal: TemporalDep,
    idempotency_key: Annotated[str | None, idempotent(PaymentIntentCreate, commit_claim=False)],
) -> PaymentIntentOut:
    # No workflow yet: the intent's first operation opens its run (update-with-start).
    # Not committed here: the Idempotency-Key's claim (`commit_claim=False`), the intent, its
    # `payment.created` event, that event's webhook deliveries and the stored answer commit
    # together once this returns, in one transaction, so a crash can never leave an intent
    # that a retry with the same key would create a second time. Nothing here is slow: a
    # request with the same key meanwhile waits a moment on the claim's row lock, then gets
    # this answer replayed.
    inserted = await insert_payment_intent(
        await session.connection(),
        intent_id=new_id("pi"),
        merchant_id=merchant.id,
        amount_in_cents=body.amount_in_cents,
        currency=body.currency,
        description=body.description,
        capture_method=body.capture_method,
        metadata=body.metadata,
    )
    if inserted.deliveries:
        # Background tasks run once the answer is sent, so after the commit: a delivery never
        # starts for an intent that is not there. Only when someone subscribed.
        background.add_task(start_event_deliveries, temporal, state.settings, inserted.deliveries)
    intent = SimpleNamespace(
        id=inserted.id,
        amount_in_cents=inserted.amount_in_cents,
        currency=inserted.currency,
        description=inserted.description,
        status=inserted.status,
        capture_method=inserted.capture_method,
        amount_capturable=inserted.amount_capturable,
        amount_received=inserted.amount_received,
        amount_refunded=inserted.amount_refunded,
        last_error=None,
        cancellation_reason=None,
        metadata_=inserted.metadata,
        created_at=inserted.created_at,
        updated_at=inserted.updated_at,
    )
    return payment_intent_out(intent, [])


@router.get(
    "",
    response_model=ListOf[PaymentIntentOut],
    operation_id="payment-intents-list",
    responses=errors(400, 401, 429, 503),
    summary="List your PaymentIntents",
)
async def list_payment_intents(
    merchant: MerchantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    starting_after: Annotated[str | None, Query(alias="startingAfter")] = None,
    status_filter: Annotated[IntentStatus | None, Query(alias="status")] = None,
) -> ListOf[PaymentIntentOut]:
    """Newest first. Pass the last id of a page as `startingAfter` to get the next page."""
    filters = [] if status_filter is None else [PaymentIntent.status == status_filter.value]
    page, has_more = await newest_first_page(
        session,
        PaymentIntent,
        [PaymentIntent.merchant_id == merchant.id],
        limit=limit,
        starting_after=starting_after,
        noun="payment_intent",
        filters=filters,
    )
    transactions = await _transactions_by_intent(session, [i.id for i in page])
    return ListOf[PaymentIntentOut](
        data=[payment_intent_out(i, transactions.get(i.id, [])) for i in page], has_more=has_more
    )


@router.get(
    "/{id}",
    response_model=PaymentIntentOut,
    operation_id="payment-intents-retrieve",
    responses=errors(401, 404, 429, 503),
    summary="Retrieve a PaymentIntent",
)
async def retrieve_payment_intent(
    id: str, merchant: MerchantDep, state: StateDep
) -> PaymentIntentOut:
    # One autocommit statement for the intent, its owner check and its transactions: no
    # transaction to open or close around a single read.
    async with state.autocommit() as connection:
        out = await load_payment_intent_out(connection, id, merchant_id=merchant.id)
    if out is None:
        # Another merchant's intent is indistinguishable from a missing one.
        raise NotFoundError("payment_intent", id)
    return out


OPERATION_RESPONSES = errors(
    202,
    400,
    401,
    402,
    404,
    409,
    429,
    503,
    card_error_holds="paymentIntent",
    described={
        202: "The network's answer is not known yet: the PaymentIntent as it stands; "
        "reconciliation settles the operation without client action.",
        400: "`amountInCents` is more than the payment allows, or the body is invalid.",
        402: "The network declined the operation: `card_error`; the error object also holds "
        "the PaymentIntent under `paymentIntent`.",
        409: "Not allowed in the intent's status (also once the payment is closed: canceled, "
        "refunded, refund window over), an operation is in flight, or a request with "
        "this Idempotency-Key is still running.",
    },
)


@router.post(
    "/{id}/capture",
    response_model=PaymentIntentOut,
    status_code=status.HTTP_200_OK,
    operation_id="payment-intents-capture",
    responses=OPERATION_RESPONSES,
    summary="Capture an authorized PaymentIntent (all or part)",
)
async def capture_payment_intent(
    intent: OwnedPaymentIntentDep,
    session: SessionDep,
    state: StateDep,
    response: Response,
    idempotency_key: Annotated[str | None, idempotent(PaymentIntentCapture, optional=True)],
    temporal: TemporalDep,
    body: PaymentIntentCapture | None = None,
) -> PaymentIntentOut:
    """Captures `amountInCents` (default: everything authorized) of a `requires_capture`
    intent at the network; the rest of the authorization is released. Waits like a charge."""
    request = body or PaymentIntentCapture()
    sent = await send_operation(
        temporal,
        session,
        intent,
        state.settings,
        PaymentIntentWorkflow.capture,
        CaptureInput(request.amount_in_cents),
        verb="capture",
        idempotency_key=idempotency_key,
    )
    return await _operation_answer(session, intent.id, sent, response)


@router.post(
    "/{id}/cancel",
    response_model=PaymentIntentOut,
    status_code=status.HTTP_200_OK,
    operation_id="payment-intents-cancel",
    responses=OPERATION_RESPONSES,
    summary="Cancel a PaymentIntent (voids its authorization)",
)
async def cancel_payment_intent(
    intent: OwnedPaymentIntentDep,
    session: SessionDep,
    state: StateDep,
    response: Response,
    idempotency_key: Annotated[str | None, idempotent(PaymentIntentCancel, optional=True)],
    temporal: TemporalDep,
    body: PaymentIntentCancel | None = None,
) -> PaymentIntentOut:
    """An intent without a successful charge is canceled at once; an authorized one
    (`requires_capture`) is voided at the network first. After a capture: 409 (refund it)."""
    request = body or PaymentIntentCancel()
    sent = await send_operation(
        temporal,
        session,
        intent,
        state.settings,
        PaymentIntentWorkflow.cancel,
        CancelInput(request.cancellation_reason),
        verb="cancel",
        idempotency_key=idempotency_key,
    )
    return await _operation_answer(session, intent.id, sent, response)


async def _operation_answer(
    session: AsyncSession, intent_id: str, sent: SentUpdate, response: Response
) -> PaymentIntentOut:
    """The PaymentIntent as it stands, with the status of this request's own transaction (a
    cancel without an authorization has none): 202 while it is not settled, 402 (raised)
    when the network declined it."""
    out = await load_payment_intent_out(session, intent_id)
    if out is None:  # intents are never deleted: only a broken database gets here
        raise NotFoundError("payment_intent", intent_id)
    if sent.result is None:
        response.status_code = status.HTTP_202_ACCEPTED
    else:
        response.status_code, _ = operation_answer(
            sent.result.transaction,
            out.model_dump(mode="json", by_alias=True),
            holder="paymentIntent",
        )
    return out


@router.get(
    "/{id}/events",
    response_model=ListOf[EventOut],
    operation_id="payment-intents-events-list",
    responses=errors(401, 404, 429, 503),
    summary="The intent's audit trail, oldest first",
)
async def list_payment_intent_events(
    intent: OwnedPaymentIntentDep, session: SessionDep
) -> ListOf[EventOut]:
    events = (
        await session.exec(
            select(Event)
            .where(Event.payment_intent_id == intent.id, merchant_visible_event())
            .order_by(col(Event.seq))
        )
    ).all()
    return ListOf[EventOut](data=[event_out(e) for e in events], has_more=False)


async def _transactions_by_intent(
    session: SessionDep, intent_ids: list[str]
) -> dict[str, list[Transaction]]:
    if not intent_ids:
        return {}
    rows = (
        await session.exec(
            select(Transaction)
            .where(col(Transaction.payment_intent_id).in_(intent_ids))
            .order_by(col(Transaction.created_at), col(Transaction.id))
        )
    ).all()
    grouped: dict[str, list[Transaction]] = {}
    for txn in rows:
        grouped.setdefault(txn.payment_intent_id, []).append(txn)
    return grouped
