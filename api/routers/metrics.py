"""`GET /metrics`: the API process's Prometheus metrics, for the operator's scraper only.

It takes the admin token (`Authorization: Bearer <DURAPAY_ADMIN_TOKEN>`, which Prometheus
sends with `authorization: {credentials: ...}`) and is left out of the merchant API's schema.
Its series count requests by route template, method and status (core/metrics.py); the
business metrics are the workers' (each worker's own port, workers/health_server.py).

One uvicorn process per API instance (as `durapay dev` and the compose file run it) keeps
every count in this process: scrape each instance. Under `uvicorn --workers N` each scrape
would reach one process at random; that setup is not supported (docs/operations.md).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from api.deps import AdminDep, AuthenticatedRoute
from core.metrics import API_REGISTRY

router = APIRouter(include_in_schema=False, route_class=AuthenticatedRoute)


@router.get("/metrics", status_code=200)
async def expose_metrics(_: AdminDep) -> Response:
    return Response(generate_latest(API_REGISTRY), media_type=CONTENT_TYPE_PLAIN_0_0_4)
