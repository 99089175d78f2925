"""How the API starts webhook deliveries (redeliver): ids, rows and workflow options in one place.

Deliveries planned by a payment are children of its workflow (`workflows/webhook_fanout.py`);
a redelivery is asked for long after that workflow may have ended, so the API starts it as a
workflow of its own, with the same workflow and the same retry schedule.
"""

from __future__ import annotations

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
    schedule = schedule_from(settings)
    for delivery_id in ids:
        try:
            await temporal.start_workflow(
                WebhookDeliveryWorkflow.run, WebhookDeliveryInput(delivery_id, schedule),
                id=delivery_id, task_queue=settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        except WorkflowAlreadyStartedError:
            pass  # the same Idempotency-Key again: that delivery is already on its way
    rows = (await session.exec(select(WebhookDelivery).where(
        WebhookDelivery.id.in_(ids)))).all()  # type: ignore[attr-defined]
    order = {delivery_id: index for index, delivery_id in enumerate(ids)}
    return sorted(rows, key=lambda d: order[d.id])
