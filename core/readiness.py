"""Readiness: can this process reach what its requests need? One definition for the API's
`/readyz` (api/routers/health.py) and each worker's (workers/health_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

# A readiness probe must answer before the prober gives up (often 1 to 5 s); a dependency that
# takes longer than this to answer is as good as down for a request.
CHECK_SECONDS = 2.0

Check = Callable[[], Awaitable[bool]]


async def postgres_ok(sessions: async_sessionmaker[AsyncSession]) -> bool:
    try:
        async with asyncio.timeout(CHECK_SECONDS), sessions() as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001 (any failure is "down")
        return False
    return True


async def temporal_ok(client: Callable[[], Awaitable[Client]]) -> bool:
    """`client` gives the Temporal client; connecting (the API's is lazy) counts toward the
    check's time."""
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await (await client()).service_client.check_health()
    except Exception:  # noqa: BLE001
        return False


async def readiness(checks: Mapping[str, Check]) -> tuple[dict[str, Any], list[str]]:
    """Run every check at once (with everything down a probe waits CHECK_SECONDS, not that
    times n): the answer's body (`status`, `checks`, and `down` when something is) and what
    is down."""
    names = list(checks)
    results = await asyncio.gather(*(checks[name]() for name in names))
    down = [name for name, ok in zip(names, results, strict=True) if not ok]
    body: dict[str, Any] = {
        "status": "unavailable" if down else "ok",
        "checks": {name: "down" if name in down else "ok" for name in names}}
    if down:
        body["down"] = down
    return body, down
