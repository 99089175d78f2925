"""The merchant API: builds the FastAPI app, its shared state and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import AppState, TemporalConnection
from api.errors import install_error_handlers
from api.routers import (
    events,
    health,
    merchants,
    payment_intents,
    refunds,
    transactions,
    webhook_endpoints,
)
from core.crypto import Cipher
from core.db.session import create_engine, session_factory
from core.settings import Settings, get_settings

DESCRIPTION = """
Durapay's PaymentIntents API. Every payment runs as a durable Temporal workflow.

## Authentication: signed requests
Every merchant request carries four headers:

* `Authorization: Bearer pk_test_…` (your public key)
* `X-Timestamp: <unix seconds>` (within 300 s of the server clock)
* `X-Nonce: <16 to 64 chars of [A-Za-z0-9_-]>` (never reused within the window)
* `X-Signature: v1=<lowercase hex HMAC-SHA256(secret_key, canonical)>`

where `canonical` is the UTF-8 string
`METHOD + "\\n" + PATH_AND_QUERY + "\\n" + TIMESTAMP + "\\n" + NONCE + "\\n" + hex(SHA256(body))`
(`PATH_AND_QUERY` exactly as sent, e.g. `/payment-intents?limit=10`; empty body for GET).
A bad signature, stale timestamp, replayed nonce or unknown/revoked key answers 401.
The project's Python client (`client.DurapayClient`) signs for you.

Operator endpoints (`/merchants`) take `Authorization: Bearer <admin token>` instead.

## Errors
Every error is `{"error": {"type", "code", "message", "param"}}`; card declines (402) add
`declineCode` and the failed `transaction`. Another merchant's object answers 404.
While a service Durapay depends on is briefly unreachable (its database or workflow engine
restarting), any request may answer 503 with `"type": "api_error"`, `"code":
"service_unavailable"` and a `Retry-After` header in seconds. Retry after that delay; retry a
`POST` with the same `Idempotency-Key`, so that it takes effect at most once.

## Idempotency
`POST` requests accept an `Idempotency-Key` header: the same key with the same body replays
the first response; the same key with a different body is a 400 (`idempotency_key_reused`);
a key whose first request is still running is a 409 (`idempotency_key_in_use`).
"""

log = logging.getLogger("durapay.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.effective_database_url)
        app.state.durapay = AppState(
            settings=settings, sessions=session_factory(engine),
            cipher=Cipher(settings.resolved_master_key()),
            temporal=TemporalConnection(settings))
        yield
        await engine.dispose()

    app = FastAPI(title="Durapay", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    for router in (health.router, merchants.router, payment_intents.router,
                   transactions.router, refunds.router, events.router, webhook_endpoints.router):
        app.include_router(router)
    return app
