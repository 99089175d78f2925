"""Webhook deliveries planned in the transaction that appends their event.

An event and the deliveries it owes the merchant's endpoints commit together, so no event is
ever recorded without its deliveries, and no separate planning step (nor its Temporal activity)
exists. Delivery ids are derived from (event, endpoint): planning the same event again (a retried
activity, the API after a crash) names the same deliveries and writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db.tables import Event, WebhookDelivery, WebhookEndpoint
from core.webhooks import delivery_id_for, is_subscribed


async def plan_deliveries(
    session: AsyncSession, merchant_id: str, event_ids: list[str]
) -> list[str]:
    """Upsert one delivery per (event, enabled endpoint subscribed to its type) and return the
    delivery ids to start, oldest event first. Events are named by id (`event_id_for(cause)`):
    one appended in this session is found through autoflush, one never appended is skipped.
    A merchant without endpoints costs one query and nothing else."""
    if not event_ids:
        return []
    endpoints = (
        await session.exec(
            select(WebhookEndpoint).where(
                WebhookEndpoint.merchant_id == merchant_id,
                WebhookEndpoint.status == "enabled",
                col(WebhookEndpoint.deleted_at).is_(None),
            )
        )
    ).all()
    if not endpoints:
        return []
    events = (
        await session.exec(
            select(Event).where(col(Event.id).in_(event_ids)).order_by(col(Event.seq))
        )
    ).all()
    rows = planned_deliveries(
        merchant_id,
        [DeliveryTarget(e.id, e.enabled_events) for e in endpoints],
        [(event.id, event.type) for event in events],
    )
    if rows:
        await session.exec(
            insert(WebhookDelivery)
            .values([{**row, "origin": "event"} for row in rows])
            .on_conflict_do_nothing()
        )
    return [row["id"] for row in rows]


class DeliveryTarget(NamedTuple):
    """An enabled endpoint of the merchant and the event types it listens to."""

    endpoint_id: str
    enabled_events: list[str]


def planned_deliveries(
    merchant_id: str, endpoints: Sequence[DeliveryTarget], events: Sequence[tuple[str, str]]
) -> list[dict[str, str]]:
    """The delivery rows owed for `events` ((id, type), oldest first): one per (event, endpoint
    subscribed to its type), endpoints in id order."""
    targets = sorted(endpoints)
    return [
        {
            "id": delivery_id_for(event_id, target.endpoint_id),
            "merchant_id": merchant_id,
            "event_id": event_id,
            "endpoint_id": target.endpoint_id,
        }
        for event_id, event_type in events
        for target in targets
        if is_subscribed(target.enabled_events, event_type)
    ]
