"""What the merchant API refuses at start-up rather than on every request."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.main import create_app
from core.settings import Settings


@pytest.mark.parametrize("ports", ["80;443", "https", "0", "70000", ""])
def test_a_malformed_webhook_port_list_stops_the_api(tmp_path: Path, ports: str) -> None:
    with pytest.raises(ValueError, match="DURAPAY_WEBHOOK_ALLOWED_PORTS"):
        create_app(Settings(home=tmp_path, webhook_allowed_ports=ports))


@pytest.mark.parametrize("ports", ["80,443", "*", "443, 8443"])
def test_a_valid_webhook_port_list_starts(tmp_path: Path, ports: str) -> None:
    create_app(Settings(home=tmp_path, webhook_allowed_ports=ports))
