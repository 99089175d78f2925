from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import select

from api.deps import MerchantDep, SessionDep
from api.errors import InvalidRequestError
from api.schemas.base import ListOf
from api.schemas.events import EventOut
from api.views import event_out
from core.db.tables import Event

router = APIRouter(prefix="/events", tags=["events"])


@router.get("", response_model=ListOf[EventOut], summary="List your events, newest first")
async def list_events(
    merchant: MerchantDep, session: SessionDep,
    type: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    starting_after: Annotated[str | None, Query(alias="startingAfter")] = None,
) -> ListOf[EventOut]:
    query = select(Event).where(Event.merchant_id == merchant.id)
    if starting_after:
        anchor = (await session.exec(select(Event).where(
            Event.id == starting_after, Event.merchant_id == merchant.id))).first()
        if anchor is None:
            raise InvalidRequestError("resource_missing", f"No such event: '{starting_after}'",
                                      "startingAfter")
        query = query.where(Event.seq < anchor.seq)  # type: ignore[operator]
    if type:
        query = query.where(Event.type == type)
    rows = (await session.exec(query.order_by(Event.seq.desc())  # type: ignore[union-attr]
                               .limit(limit + 1))).all()
    return ListOf[EventOut](data=[event_out(e) for e in rows[:limit]], has_more=len(rows) > limit)
