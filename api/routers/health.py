"""Health, unauthenticated: `/livez` (this process serves requests) and `/readyz` (it can reach
Postgres and Temporal, so requests can succeed); `/healthz` is `/readyz` under its older name,
which the local stack's supervisor and existing probes use."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep
from api.errors import RETRY_AFTER_SECONDS
from api.openapi import RETRY_AFTER
from api.schemas.health import Liveness, NotReady, Readiness

router = APIRouter(tags=["health"])

# A readiness probe must answer before the prober gives up (often 1 to 5 s); a dependency that
# takes longer than this to answer is as good as down for a request.
CHECK_SECONDS = 2


READINESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Postgres and Temporal both answer."},
    503: {"model": NotReady, "headers": RETRY_AFTER,
          "description": "Not ready: `down` names what cannot be reached."},
}


@router.get("/livez", response_model=Liveness, operation_id="health-livez",
            summary="The API process is up and serving (no auth)")
async def check_live() -> dict[str, str]:
    """200 while the process serves requests; checks nothing else, so a liveness probe does not
    restart the API for an outage of Postgres or Temporal, which a restart cannot fix."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="health-readyz", responses=READINESS_RESPONSES,
            summary="The API can reach Postgres and Temporal (no auth)")
@router.get("/healthz", operation_id="health-healthz", responses=READINESS_RESPONSES,
            summary="Alias of /readyz (no auth)")
async def check_ready(state: StateDep) -> JSONResponse:
    """200 only when Postgres and Temporal both answer; otherwise 503 with the error object,
    naming what is down (and, as before, `status`, `checks` and `down`)."""
    # Both at once: with both down the probe waits CHECK_SECONDS, not twice that.
    postgres, temporal = await asyncio.gather(_postgres_ok(state), _temporal_ok(state))
    checks = {"postgres": postgres, "temporal": temporal}
    down = [name for name, ok in checks.items() if not ok]
    body: dict[str, Any] = {
        "status": "ok" if not down else "unavailable",
        "checks": {name: "ok" if ok else "down" for name, ok in checks.items()}}
    if not down:
        return JSONResponse(body)
    body["down"] = down
    body["error"] = {"type": "api_error", "code": "service_unavailable",
                     "message": f"Not ready: cannot reach {' and '.join(down)}.", "param": None}
    return JSONResponse(body, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _postgres_ok(state: StateDep) -> bool:
    try:
        async with asyncio.timeout(CHECK_SECONDS), state.sessions() as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001 (any failure is "down")
        return False
    return True


async def _temporal_ok(state: StateDep) -> bool:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            client = await state.temporal.get()
            return await client.service_client.check_health()
    except Exception:  # noqa: BLE001
        return False
