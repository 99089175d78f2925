"""What the merchant API refuses at start-up rather than on every request."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter

from api.deps import AdminDep
from api.main import create_app
from api.routers import health
from core.settings import Settings


@pytest.mark.parametrize("ports", ["80;443", "https", "0", "70000", ""])
def test_a_malformed_webhook_port_list_stops_the_api(tmp_path: Path, ports: str) -> None:
    with pytest.raises(ValueError, match="DURAPAY_WEBHOOK_ALLOWED_PORTS"):
        create_app(Settings(home=tmp_path, webhook_allowed_ports=ports))


@pytest.mark.parametrize("ports", ["80,443", "*", "443, 8443"])
def test_a_valid_webhook_port_list_starts(tmp_path: Path, ports: str) -> None:
    create_app(Settings(home=tmp_path, webhook_allowed_ports=ports))


def test_an_authenticated_route_that_would_parse_its_body_first_stops_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A router without route_class=AuthenticatedRoute would parse a body before the 401.
    plain = APIRouter()

    @plain.post("/operator-thing")
    async def operator_thing(_: AdminDep) -> None:
        return None

    monkeypatch.setattr(health, "router", plain)
    with pytest.raises(RuntimeError, match="/operator-thing: .*AuthenticatedRoute"):
        create_app(Settings(home=tmp_path))
