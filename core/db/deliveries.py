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


async def plan_deliveries(session: AsyncSession, events: list[Event]) -> list[str]:
    """Upsert one delivery per (event, enabled endpoint subscribed to its type) and return the
    delivery ids to start, oldest event first. One query when the merchant has no endpoint."""
    if not events:
        return []
    endpoints = (await session.exec(select(WebhookEndpoint).where(
        WebhookEndpoint.merchant_id == events[0].merchant_id,
        WebhookEndpoint.status == "enabled",
        WebhookEndpoint.deleted_at.is_(None)))).all()  # type: ignore[union-attr]
    rows = [{"id": delivery_id_for(event.id, endpoint.id), "merchant_id": event.merchant_id,
             "event_id": event.id, "endpoint_id": endpoint.id, "origin": "event"}
            for event in events for endpoint in sorted(endpoints, key=lambda e: e.id)
            if is_subscribed(endpoint.enabled_events, event.type)]
    if rows:
        await session.exec(insert(WebhookDelivery).values(rows).on_conflict_do_nothing())
    return [str(row["id"]) for row in rows]


async def events_by_id(session: AsyncSession, event_ids: list[str]) -> list[Event]:
    """Events already appended (a retried activity finds the ones its first try committed)."""
    if not event_ids:
        return []
    found = (await session.exec(select(Event).where(
        Event.id.in_(event_ids)).order_by(Event.seq))).all()  # type: ignore[attr-defined, arg-type]
    return list(found)
