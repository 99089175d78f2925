"""api/routers/health.py: liveness of the API and of what it depends on."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from core.settings import Settings
from tests.api.app_instances import app_instance
from tests.stack import free_port

pytestmark = pytest.mark.api


async def test_an_unknown_url_is_a_404_error_object(http: httpx.AsyncClient) -> None:
    response = await http.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "type": "not_found",
            "code": "resource_missing",
            "message": "Unrecognized request URL.",
            "param": None,
        }
    }


async def test_livez_is_200_and_checks_nothing(settings: Settings) -> None:
    # Postgres and Temporal both unreachable: the process still serves, so it is live.
    async with app_instance(
        settings, database_url=_dead_postgres(settings), temporal_address=f"127.0.0.1:{free_port()}"
    ) as http:
        response = await http.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
async def test_ready_is_200_when_postgres_and_temporal_answer(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"postgres": "ok", "temporal": "ok"}}


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
async def test_ready_is_503_naming_temporal_when_it_is_down(settings: Settings, path: str) -> None:
    async with app_instance(settings, temporal_address=f"127.0.0.1:{free_port()}") as http:
        response = await http.get(path)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.json() == {
        "status": "unavailable",
        "checks": {"postgres": "ok", "temporal": "down"},
        "down": ["temporal"],
        "error": {
            "type": "api_error",
            "code": "service_unavailable",
            "message": "Not ready: cannot reach temporal.",
            "param": None,
        },
    }


async def test_ready_is_503_naming_postgres_without_its_password(settings: Settings) -> None:
    dead = _dead_postgres(settings)
    async with app_instance(settings, database_url=dead) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["postgres"]
    assert response.json()["error"]["message"] == "Not ready: cannot reach postgres."
    password = urlsplit(dead).password
    assert password is not None and password not in response.text


def _dead_postgres(settings: Settings) -> str:
    """The session's database URL (its password included) on a port where nothing listens."""
    url = urlsplit(settings.database_url or "")
    return url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{free_port()}").geturl()
