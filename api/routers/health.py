from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness of the API and its dependencies (no auth)")
async def check_health(state: StateDep) -> JSONResponse:
    """200 only when Postgres and Temporal both answer; otherwise 503 naming what is down."""
    checks = {"postgres": await _postgres_ok(state), "temporal": await _temporal_ok(state)}
    down = [name for name, ok in checks.items() if not ok]
    body = {"status": "ok" if not down else "unavailable",
            "checks": {name: "ok" if ok else "down" for name, ok in checks.items()}}
    if down:
        body["down"] = down
    return JSONResponse(body, status_code=200 if not down else 503)


async def _postgres_ok(state: StateDep) -> bool:
    try:
        async with asyncio.timeout(2), state.sessions() as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001 (any failure is "down")
        return False
    return True


async def _temporal_ok(state: StateDep) -> bool:
    try:
        async with asyncio.timeout(2):
            client = await state.temporal.get()
            return await client.service_client.check_health()
    except Exception:  # noqa: BLE001
        return False
