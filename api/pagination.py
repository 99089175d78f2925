"""Cursor pagination, newest first, as every list endpoint of docs/api.md does it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import InvalidRequestError
from core.db.queries import newest_first_after

Row = TypeVar("Row")


async def newest_first_page(
    session: AsyncSession,
    model: type[Row],
    scope: Sequence[Any],
    *,
    limit: int,
    starting_after: str | None,
    noun: str,
    filters: Sequence[Any] = (),
) -> tuple[list[Row], bool]:
    """One page of `model` rows within `scope` (e.g. the caller's merchant), newest first,
    after the row named by `starting_after`, which must itself be within `scope` (another
    merchant's id is `resource_missing`, as if it did not exist). Returns (rows, has_more)."""
    table: Any = model
    cursor = None
    if starting_after:
        anchor: Any = (
            await session.exec(select(model).where(table.id == starting_after, *scope))
        ).first()
        if anchor is None:
            raise InvalidRequestError(
                "resource_missing", f"No such {noun}: '{starting_after}'", "startingAfter"
            )
        cursor = (anchor.created_at, anchor.id)
    rows = (
        await session.exec(
            select(model)
            .where(*scope, *filters, newest_first_after(model, cursor))
            .order_by(table.created_at.desc(), table.id.desc())
            .limit(limit + 1)
        )
    ).all()
    return list(rows[:limit]), len(rows) > limit
