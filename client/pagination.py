"""List iterators that follow `startingAfter` until `hasMore` is false.

async for intent in durapay.payment_intents.list(limit=50):   # every page, lazily
    ...
page = await durapay.payment_intents.list(limit=10).first_page()   # one page
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic

from client.models import Item, Page

FetchPage = Callable[[str | None], Awaitable[Page[Item]]]


class AutoPager(Generic[Item]):
    """Lazy: nothing is requested before iteration starts. `starting_after` resumes after an
    id already seen; each page asks for the last id of the one before it."""

    def __init__(self, fetch_page: FetchPage[Item], *, starting_after: str | None = None) -> None:
        self._fetch_page = fetch_page
        self._starting_after = starting_after

    async def first_page(self) -> Page[Item]:
        return await self._fetch_page(self._starting_after)

    async def pages(self) -> AsyncIterator[Page[Item]]:
        cursor = self._starting_after
        while True:
            page = await self._fetch_page(cursor)
            yield page
            if not page.has_more or not page.data:
                return
            # Every listed object has an id; the models declare only their own fields.
            cursor = page.data[-1].id  # type: ignore[attr-defined]

    async def __aiter__(self) -> AsyncIterator[Item]:
        async for page in self.pages():
            for item in page.data:
                yield item

    async def to_list(self, max_items: int | None = None) -> list[Item]:
        """Every item (or the first `max_items`), following pages as needed."""
        items: list[Item] = []
        if max_items is not None and max_items <= 0:
            return items
        async for item in self:
            items.append(item)
            if max_items is not None and len(items) >= max_items:
                break  # no request for a page that would not be used
        return items
