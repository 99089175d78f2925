"""Webhook deliveries planned in the transaction that appends their event.

An event and the deliveries it owes the merchant's endpoints commit together, so no event is
ever recorded without its deliveries, and no separate planning step (nor its Temporal activity)
exists. Delivery ids are derived from (event, endpoint): planning the same event again (a retried
activity, the API after a crash) names the same deliveries and writes nothing twice.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db.tables import Event, WebhookDelivery, WebhookEndpoint
from core.webhooks import delivery_id_for, is_subscribed


async def plan_deliveries(session: AsyncSession, merchant_id: str,
                         event_ids: list[str]) -> list[str]:
    """Upsert one delivery per (event, enabled endpoint subscribed to its type) and return the
    delivery ids to start, oldest event first. Events are named by id (`event_id_for(cause)`):
    one appended in this session is found through autoflush, one never appended is skipped.
    A merchant without endpoints costs one query and nothing else."""
    if not event_ids:
        return []
    endpoints = (await session.exec(select(WebhookEndpoint).where(
        WebhookEndpoint.merchant_id == merchant_id,
        WebhookEndpoint.status == "enabled",
        WebhookEndpoint.deleted_at.is_(None)))).all()  # type: ignore[union-attr]
    if not endpoints:
        return []
    events = (await session.exec(select(Event).where(
        Event.id.in_(event_ids)).order_by(Event.seq))).all()  # type: ignore[attr-defined, arg-type]
    rows = [{"id": delivery_id_for(event.id, endpoint.id), "merchant_id": event.merchant_id,
             "event_id": event.id, "endpoint_id": endpoint.id, "origin": "event"}
            for event in events for endpoint in sorted(endpoints, key=lambda e: e.id)
            if is_subscribed(endpoint.enabled_events, event.type)]
    if rows:
        await session.exec(insert(WebhookDelivery).values(rows).on_conflict_do_nothing())
    return [str(row["id"]) for row in rows]
