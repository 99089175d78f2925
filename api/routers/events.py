from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlmodel import col, select

from api.deps import (
    AuthenticatedRoute,
    IdempotencyKeyDep,
    MerchantDep,
    SessionDep,
    StateDep,
    TemporalDep,
)
from api.errors import ConflictError, InvalidRequestError, NotFoundError
from api.openapi import errors
from api.schemas.base import ListOf
from api.schemas.events import EventOut
from api.schemas.webhook_endpoints import RedeliverRequest, WebhookDeliveryOut
from api.views import event_out, load_webhook_deliveries_out
from api.webhook_workflow import start_redeliveries
from core.db.queries import merchant_visible_event
from core.db.tables import Event, WebhookEndpoint
from core.webhooks import is_subscribed

router = APIRouter(prefix="/events", tags=["events"], route_class=AuthenticatedRoute)


@router.get(
    "",
    response_model=ListOf[EventOut],
    operation_id="events-list",
    responses=errors(400, 401, 429, 503),
    summary="List your events, newest first",
)
async def list_events(
    merchant: MerchantDep,
    session: SessionDep,
    type: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    starting_after: Annotated[str | None, Query(alias="startingAfter")] = None,
) -> ListOf[EventOut]:
    query = select(Event).where(Event.merchant_id == merchant.id, merchant_visible_event())
    if starting_after:
        anchor = (
            await session.exec(
                select(Event).where(
                    Event.id == starting_after,
                    Event.merchant_id == merchant.id,
                    merchant_visible_event(),
                )
            )
        ).first()
        if anchor is None:
            raise InvalidRequestError(
                "resource_missing", f"No such event: '{starting_after}'", "startingAfter"
            )
        query = query.where(col(Event.seq) < anchor.seq)
    if type:
        query = query.where(Event.type == type)
    rows = (await session.exec(query.order_by(col(Event.seq).desc()).limit(limit + 1))).all()
    return ListOf[EventOut](data=[event_out(e) for e in rows[:limit]], has_more=len(rows) > limit)


@router.post(
    "/{id}/redeliver",
    response_model=ListOf[WebhookDeliveryOut],
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="events-redeliver",
    responses=errors(
        400,
        401,
        404,
        409,
        429,
        503,
        described={
            404: "No such event, or no such webhook endpoint (`endpointId`).",
            409: "The endpoint named by `endpointId` is disabled.",
        },
    ),
    summary="Send an event again, to every subscribed endpoint or to `endpointId`",
    description="Starts one new delivery per endpoint (answer 202 with them, status "
    "`pending`); each is retried like the first. The `webhook-id` header is "
    "still the event id, so a receiver that already processed the event "
    "can tell. The same `Idempotency-Key` names the same deliveries: a "
    "retried request sends nothing twice. One event is redelivered to "
    "one endpoint at most `DURAPAY_MAX_REDELIVERIES` times (default 10): "
    "past it, 400 `redelivery_limit_reached` and nothing is sent.",
)
async def redeliver_event(
    id: str,
    merchant: MerchantDep,
    state: StateDep,
    session: SessionDep,
    temporal: TemporalDep,
    idempotency_key: IdempotencyKeyDep,
    body: RedeliverRequest | None = None,
) -> ListOf[WebhookDeliveryOut]:
    event = (
        await session.exec(
            select(Event).where(
                Event.id == id, Event.merchant_id == merchant.id, merchant_visible_event()
            )
        )
    ).first()
    if event is None:
        raise NotFoundError("event", id)
    live = (WebhookEndpoint.merchant_id == merchant.id, col(WebhookEndpoint.deleted_at).is_(None))
    endpoint_id = (body or RedeliverRequest()).endpoint_id
    if endpoint_id is not None:
        endpoint = (
            await session.exec(
                select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, *live)
            )
        ).first()
        if endpoint is None:
            raise NotFoundError("webhook endpoint", endpoint_id)
        if endpoint.status != "enabled":
            raise ConflictError(
                "endpoint_disabled",
                "The webhook endpoint is disabled; enable it before redelivering to it.",
                "endpointId",
            )
        endpoints = [endpoint]
    else:
        candidates = (
            await session.exec(
                select(WebhookEndpoint)
                .where(*live, WebhookEndpoint.status == "enabled")
                .order_by(col(WebhookEndpoint.created_at))
            )
        ).all()
        endpoints = [e for e in candidates if is_subscribed(e.enabled_events, event.type)]
    request_key = f"key:{idempotency_key}" if idempotency_key else f"new:{uuid.uuid4().hex}"
    deliveries = await start_redeliveries(
        session, temporal, state.settings, event=event, endpoints=endpoints, request_key=request_key
    )
    data = await load_webhook_deliveries_out(session, deliveries)
    return ListOf[WebhookDeliveryOut](data=data, has_more=False)
