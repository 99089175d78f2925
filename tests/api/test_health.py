"""api/routers/health.py: liveness of the API and of what it depends on."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.api


async def test_health_is_200_when_postgres_and_temporal_answer(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok",
                               "checks": {"postgres": "ok", "temporal": "ok"}}


async def test_an_unknown_url_is_a_404_error_object(http: httpx.AsyncClient) -> None:
    response = await http.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"error": {"type": "not_found", "code": "resource_missing",
                                         "message": "Unrecognized request URL.", "param": None}}
