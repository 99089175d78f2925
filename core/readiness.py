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
# A condition that does not stop this process from serving but needs an operator: a message,
# or None when all is well. A warning never turns readiness to 503.
ReadinessWarning = Callable[[], Awaitable[str | None]]


async def postgres_ok(sessions: async_sessionmaker[AsyncSession]) -> bool:
    try:
        async with asyncio.timeout(CHECK_SECONDS), sessions() as session:
            # sqlmodel types exec() for its select() and DML only; it runs text() the same way.
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


async def readiness(
    checks: Mapping[str, Check],
    warnings: Mapping[str, ReadinessWarning] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Run every check and warning at once (with everything down a probe waits CHECK_SECONDS,
    not that times n): the answer's body (`status`, `checks`, `down` when something is,
    `warnings` when one speaks) and what is down."""
    names, warning_names = list(checks), list(warnings or {})
    results, messages = await asyncio.gather(
        asyncio.gather(*(checks[name]() for name in names)),
        asyncio.gather(*(_warning((warnings or {})[name]) for name in warning_names)),
    )
    down = [name for name, ok in zip(names, results, strict=True) if not ok]
    body: dict[str, Any] = {
        "status": "unavailable" if down else "ok",
        "checks": {name: "down" if name in down else "ok" for name in names},
    }
    if down:
        body["down"] = down
    spoken = {name: m for name, m in zip(warning_names, messages, strict=True) if m}
    if spoken:
        body["warnings"] = spoken
    return body, down


async def _warning(warning: ReadinessWarning) -> str | None:
    # A warning that cannot be evaluated says nothing: the checks report what is down.
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await warning()
    except Exception:  # noqa: BLE001
        return None


# Every logical slot of Durapay's database: a consumer that stalls keeps the WAL from its
# position on; with max_slot_wal_keep_size at -1 nothing bounds that short of a full disk.
SLOT_WAL_UNBOUNDED_SQL = """
SELECT current_setting('max_slot_wal_keep_size') = '-1' AS unlimited,
       (SELECT count(*) FROM pg_replication_slots
        WHERE slot_type = 'logical' AND database = current_database()) AS slots
"""


async def slot_wal_unbounded(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    """A warning while a replication slot exists and the server keeps its WAL without limit."""
    async with sessions() as session:
        # sqlmodel types exec() for its select() and DML only; it runs text() the same way.
        row = (await session.exec(text(SLOT_WAL_UNBOUNDED_SQL))).one()  # type: ignore[call-overload]
    if row.unlimited and row.slots:
        return (
            f"{row.slots} logical replication slot(s) and max_slot_wal_keep_size = -1: a "
            "stalled event stream consumer keeps WAL until the database's disk is full; "
            "set a limit (docs/operations.md)"
        )
    return None
