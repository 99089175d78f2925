"""Finding webhook deliveries nobody started: the database side of the delivery reaper.

A delivery is planned in the transaction that appends its event, and started afterwards by
whoever appended it (the payment's run, or the API). If that start never happens (a run lost
between the two, the API's start deferred by a Temporal outage and no charge following), the
row stays `pending` with no attempt. `workflows/webhook_reaper.py` starts those, once they are
older than a grace period, under the delivery's own id: one already running, or already run,
is refused by Temporal, so starting twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.db.tables import WebhookDelivery


@dataclass
class StrandedDeliveriesPage:
    """Pending deliveries without an attempt, created before `created_before`, in (created_at,
    id) order after the cursor (`after_created_at`, `after_id`) of the page before."""

    created_before: datetime
    limit: int
    after_created_at: datetime | None = None
    after_id: str | None = None


@dataclass
class StrandedDeliveries:
    delivery_ids: list[str]
    # The cursor of the next page; None when this page was the last.
    next_created_at: datetime | None = None
    next_id: str | None = None


class WebhookReaperActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @activity.defn
    async def find_stranded_deliveries(self, page: StrandedDeliveriesPage) -> StrandedDeliveries:
        """Read only. The partial index `ix_webhook_delivery_unattempted` holds exactly the
        rows that may be stranded (pending, never attempted), so a page costs an index range
        scan, however many deliveries the table holds."""
        query = (
            select(WebhookDelivery.id, WebhookDelivery.created_at)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempt_count == 0,
                col(WebhookDelivery.created_at) < page.created_before,
            )
            .order_by(col(WebhookDelivery.created_at), col(WebhookDelivery.id))
            .limit(page.limit)
        )
        if page.after_created_at is not None and page.after_id is not None:
            query = query.where(
                or_(
                    col(WebhookDelivery.created_at) > page.after_created_at,
                    and_(
                        col(WebhookDelivery.created_at) == page.after_created_at,
                        col(WebhookDelivery.id) > page.after_id,
                    ),
                )
            )
        async with self._sessions() as session:
            rows = (await session.exec(query)).all()
        if len(rows) < page.limit:
            return StrandedDeliveries([row[0] for row in rows])
        last_id, last_created_at = rows[-1]
        return StrandedDeliveries([row[0] for row in rows], last_created_at, last_id)
