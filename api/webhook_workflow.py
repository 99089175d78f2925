"""How the API starts webhook deliveries: `payment.created`'s and redeliveries.

Deliveries of a payment's later events are children of its workflow
(`workflows/webhook_fanout.py`); the API starts those of the event it appends itself and
redeliveries (asked for long after a payment's run may have ended) as workflows of their own,
with the same workflow and the same retry schedule.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.db.tables import Event, WebhookDelivery, WebhookEndpoint
from core.settings import Settings
from core.webhooks import delivery_id_for, schedule_from
from workflows.webhook_delivery import WebhookDeliveryInput, WebhookDeliveryWorkflow

log = logging.getLogger("durapay.api")
# Started after the 201 is sent; a Temporal outage must not keep that task waiting for long.
START_WAIT_SECONDS = 2.0


async def start_redeliveries(session: AsyncSession, temporal: Client, settings: Settings, *,
                             event: Event, endpoints: list[WebhookEndpoint],
                             request_key: str) -> list[WebhookDelivery]:
    """One new delivery per endpoint, named by the request: the same key starts nothing twice."""
    ids = [delivery_id_for(event.id, e.id, "redeliver", request_key) for e in endpoints]
    if ids:
        await session.exec(insert(WebhookDelivery).values([
            {"id": delivery_id, "merchant_id": event.merchant_id, "event_id": event.id,
             "endpoint_id": endpoint.id, "origin": "redeliver"}
            for delivery_id, endpoint in zip(ids, endpoints, strict=True)
        ]).on_conflict_do_nothing())
    await session.commit()
    for delivery_id in ids:
        await _start_delivery(temporal, settings, delivery_id)
    rows = (await session.exec(select(WebhookDelivery).where(
        WebhookDelivery.id.in_(ids)))).all()  # type: ignore[attr-defined]
    order = {delivery_id: index for index, delivery_id in enumerate(ids)}
    return sorted(rows, key=lambda d: order[d.id])


async def start_event_deliveries(temporal: Client, settings: Settings,
                                 delivery_ids: list[str]) -> None:
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
            WebhookDeliveryWorkflow.run, WebhookDeliveryInput(delivery_id, schedule_from(settings)),
            id=delivery_id, task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
    except WorkflowAlreadyStartedError:
        pass  # the same delivery again (the same Idempotency-Key): already on its way
