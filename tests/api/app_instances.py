"""More app instances on the session's Postgres and Temporal, as more API processes (or an
API with other settings) would be: each builds its own engine, pool and cipher."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from api.main import create_app
from core.settings import Settings
from tests.api.conftest import Merchant


@asynccontextmanager
async def app_instance(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a new app built from `settings` with `changes` (its lifespan included)."""
    app = create_app(settings.model_copy(update=changes))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://durapay.test"
        ) as http,
    ):
        yield http


def through(http: httpx.AsyncClient, merchant: Merchant) -> Merchant:
    """`merchant`'s signed requests, sent to the app behind `http`."""
    return dataclasses.replace(merchant, http=http)
