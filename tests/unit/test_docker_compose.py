"""docker-compose.temporal.yml cannot run here (no Docker); check what can be checked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from core import search_attributes
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.temporal.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = ("migrate", "cardnet", "worker", "api")
UNPREFIXED = {"DATABASE_URL", "TEMPORAL_ADDRESS"}
CARDNET_ENV = {"DURAPAY_CARDNET_PORT", "DURAPAY_CARDNET_DATA_DIR", "DURAPAY_CARDNET_HOLD_SECONDS",
               "DURAPAY_CARDNET_FAULTS"}


def test_every_durapay_variable_is_a_setting() -> None:
    fields = {f"DURAPAY_{name.upper()}" for name in Settings.model_fields}
    for name in OURS:
        for variable in SERVICES[name].get("environment", {}):
            assert variable in fields | UNPREFIXED | CARDNET_ENV, (name, variable)


def test_services_point_at_each_other() -> None:
    env = SERVICES["api"]["environment"]
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["DATABASE_URL"].startswith("postgresql://") and "@postgresql:5432/" in env[
        "DATABASE_URL"]
    assert env["DURAPAY_CARDNET_URL"] == "http://cardnet:8081"
    assert SERVICES["worker"]["environment"] == env  # one shared block
    assert SERVICES["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert SERVICES["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgresql"


def test_workers_can_scale() -> None:
    worker = SERVICES["worker"]
    assert "ports" not in worker and "container_name" not in worker


def test_temporal_ports_are_published_on_loopback_only() -> None:
    # Whoever reaches Temporal's frontend (or its UI) can send Updates to every payment.
    published = {name: [str(port) for port in service.get("ports", [])]
                 for name, service in SERVICES.items() if name.startswith("temporal")}
    assert published["temporal"] and published["temporal-ui"], published
    for name, ports in published.items():
        assert all(port.startswith("127.0.0.1:") for port in ports), (name, ports)


def test_secrets_are_required_not_defaulted() -> None:
    raw = (ROOT / "docker-compose.temporal.yml").read_text()
    for secret in ("DURAPAY_MASTER_KEY", "DURAPAY_ADMIN_TOKEN"):
        assert re.search(r"\$\{" + secret + r":\?", raw), secret


def test_search_attributes_match_the_dev_launcher() -> None:
    command = " ".join(SERVICES["temporal-setup"]["command"])
    registered = dict(re.findall(r"(Durapay\w+):(\w+)", command))
    flags = search_attributes.registration_flags()[1::2]
    assert registered == dict(flag.split("=") for flag in flags)


def test_commands_name_real_modules() -> None:
    for name in ("worker", "cardnet"):
        module = SERVICES[name]["command"][2]
        assert (ROOT / module.replace(".", "/")).with_suffix(".py").exists() or \
            (ROOT / module / "__main__.py").exists()
    assert "api.main:create_app" in SERVICES["api"]["command"]
    assert (ROOT / "Dockerfile").exists()
    assert (ROOT / "deploy/postgres-init/10-durapay.sql").exists()
