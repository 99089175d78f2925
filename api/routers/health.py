"""Health, unauthenticated: `/livez` (this process serves requests) and `/readyz` (it can reach
Postgres and Temporal, so requests can succeed); `/healthz` is `/readyz` under its older name,
which the local stack's supervisor and existing probes use."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep
from api.errors import RETRY_AFTER_SECONDS
from api.openapi import RETRY_AFTER
from api.schemas.health import Liveness, NotReady, Readiness
from core.readiness import postgres_ok, readiness, temporal_ok

router = APIRouter(tags=["health"])


READINESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Postgres and Temporal both answer."},
    503: {
        "model": NotReady,
        "headers": RETRY_AFTER,
        "description": "Not ready: `down` names what cannot be reached.",
    },
}


@router.get(
    "/livez",
    response_model=Liveness,
    operation_id="health-livez",
    summary="The API process is up and serving (no auth)",
)
async def check_live() -> dict[str, str]:
    """200 while the process serves requests; checks nothing else, so a liveness probe does not
    restart the API for an outage of Postgres or Temporal, which a restart cannot fix."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="health-readyz",
    responses=READINESS_RESPONSES,
    summary="The API can reach Postgres and Temporal (no auth)",
)
@router.get(
    "/healthz",
    operation_id="health-healthz",
    responses=READINESS_RESPONSES,
    summary="Alias of /readyz (no auth)",
)
async def check_ready(state: StateDep) -> JSONResponse:
    """200 only when Postgres and Temporal both answer; otherwise 503 with the error object,
    naming what is down, with `status`, `checks` and `down`."""
    body, down = await readiness(
        {
            "postgres": lambda: postgres_ok(state.sessions),
            "temporal": lambda: temporal_ok(state.temporal.get),
        }
    )
    if not down:
        return JSONResponse(body)
    body["error"] = {
        "type": "api_error",
        "code": "service_unavailable",
        "message": f"Not ready: cannot reach {' and '.join(down)}.",
        "param": None,
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
