"""How the API starts webhook deliveries: `payment.created`'s and redeliveries.

Deliveries of a payment's later events are children of its workflow
(`workflows/webhook_fanout.py`); the API starts those of the event it appends itself and
redeliveries (asked for long after a payment's run may have ended) as workflows of their own,
with the same workflow and the same retry schedule.

Manual redeliveries are capped per event and endpoint (`DURAPAY_MAX_REDELIVERIES`): each
starts a workflow that may retry for three days, so an unbounded number would let one merchant
flood the workers and the endpoint.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.errors import InvalidRequestError
from core.db.tables import Event, WebhookDelivery, WebhookEndpoint
from core.settings import Settings
from core.webhooks import delivery_id_for, schedule_from
from workflows.webhook_delivery import WebhookDeliveryInput, WebhookDeliveryWorkflow

log = logging.getLogger("durapay.api")
# Started after the 201 is sent; a Temporal outage must not keep that task waiting for long.
START_WAIT_SECONDS = 2.0


async def start_redeliveries(
    session: AsyncSession,
    temporal: Client,
    settings: Settings,
    *,
    event: Event,
    endpoints: list[WebhookEndpoint],
    request_key: str,
) -> list[WebhookDelivery]:
    """One new delivery per endpoint, named by the request: the same key starts nothing twice.
    Refuses them all, creating nothing, when one endpoint already had its share of the event."""
    ids = [delivery_id_for(event.id, e.id, "redeliver", request_key) for e in endpoints]
    if ids:
        await _check_redelivery_count(
            session, event, ids=ids, endpoints=endpoints, limit=settings.max_redeliveries
        )
        await session.exec(
            insert(WebhookDelivery)
            .values(
                [
                    {
                        "id": delivery_id,
                        "merchant_id": event.merchant_id,
                        "event_id": event.id,
                        "endpoint_id": endpoint.id,
                        "origin": "redeliver",
                    }
                    for delivery_id, endpoint in zip(ids, endpoints, strict=True)
                ]
            )
            .on_conflict_do_nothing()
        )
    await session.commit()
    for delivery_id in ids:
        await _start_delivery(temporal, settings, delivery_id)
    rows = (
        await session.exec(select(WebhookDelivery).where(col(WebhookDelivery.id).in_(ids)))
    ).all()
    order = {delivery_id: index for index, delivery_id in enumerate(ids)}
    return sorted(rows, key=lambda d: order[d.id])


async def _check_redelivery_count(
    session: AsyncSession,
    event: Event,
    *,
    ids: list[str],
    endpoints: list[WebhookEndpoint],
    limit: int,
) -> None:
    """Past `limit` redeliveries of `event` to one of `endpoints`, refuse. This request's own
    ids do not count: its retry (the same Idempotency-Key) creates nothing and is answered."""
    endpoint_ids = sorted(e.id for e in endpoints)
    # Locked until the deliveries commit, so concurrent requests count each other; in id order,
    # so two of them cannot deadlock. NO KEY UPDATE: deliveries referencing them still insert.
    await session.exec(
        select(WebhookEndpoint.id)
        .where(col(WebhookEndpoint.id).in_(endpoint_ids))
        .order_by(WebhookEndpoint.id)
        .with_for_update(key_share=True)
    )
    counts = (
        await session.exec(
            select(WebhookDelivery.endpoint_id, func.count())
            .where(
                WebhookDelivery.event_id == event.id,
                WebhookDelivery.origin == "redeliver",
                col(WebhookDelivery.endpoint_id).in_(endpoint_ids),
                col(WebhookDelivery.id).not_in(ids),
            )
            .group_by(WebhookDelivery.endpoint_id)
            .order_by(WebhookDelivery.endpoint_id)
        )
    ).all()
    for endpoint_id, redeliveries in counts:
        if redeliveries >= limit:
            raise InvalidRequestError(
                "redelivery_limit_reached",
                f"Event {event.id} was already redelivered {redeliveries} times to webhook "
                f"endpoint {endpoint_id}, the most allowed ({limit}); nothing was sent.",
            )


async def start_event_deliveries(
    temporal: Client, settings: Settings, delivery_ids: list[str]
) -> None:
    """Start the deliveries of an event the API appended (`payment.created`), planned in the
    transaction that appended it. A Temporal outage does not fail the merchant's request (the
    intent is committed): the intent's first charge starts them again (see
    `record_charge_attempt`), under the same ids."""
    try:
        async with asyncio.timeout(START_WAIT_SECONDS):
            for delivery_id in delivery_ids:
                await _start_delivery(temporal, settings, delivery_id)
    except Exception as error:  # noqa: BLE001
        log.warning("webhook deliveries %s deferred: %s", delivery_ids, type(error).__name__)


async def _start_delivery(temporal: Client, settings: Settings, delivery_id: str) -> None:
    try:
        await temporal.start_workflow(
            WebhookDeliveryWorkflow.run,
            WebhookDeliveryInput(delivery_id, schedule_from(settings)),
            id=delivery_id,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass  # the same delivery again (the same Idempotency-Key): already on its way
