from __future__ import annotations

import base64
from pathlib import Path

import pytest

from core.settings import Settings, to_asyncpg_url


def test_defaults_match_the_documented_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DURAPAY_API_PORT", "DURAPAY_CARDNET_PORT", "DURAPAY_TEMPORAL_PORT",
                 "DURAPAY_TEMPORAL_UI_PORT", "DURAPAY_WORKERS", "DURAPAY_HOME", "DATABASE_URL",
                 "TEMPORAL_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.api_port, settings.cardnet_port, settings.temporal_port,
            settings.temporal_ui_port, settings.workers) == (8000, 8081, 7233, 8233, 1)
    assert settings.home == Path(".durapay")
    assert settings.effective_temporal_address == "127.0.0.1:7233"


def test_external_services_come_from_unprefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/pay")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal:7233")
    settings = Settings()
    assert settings.effective_database_url == "postgresql+asyncpg://u:p@db:5432/pay"
    assert settings.effective_temporal_address == "temporal:7233"


def test_url_forms_are_normalized_to_asyncpg() -> None:
    assert to_asyncpg_url("postgresql://h/db") == "postgresql+asyncpg://h/db"
    with pytest.raises(ValueError):
        to_asyncpg_url("mysql://h/db")


def test_admin_token_and_master_key_are_generated_once(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURAPAY_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("DURAPAY_MASTER_KEY", raising=False)
    settings = Settings(home=tmp_path)
    token = settings.resolved_admin_token()
    assert token == Settings(home=tmp_path).resolved_admin_token()
    key = settings.resolved_master_key()
    assert len(key) == 32 and key == Settings(home=tmp_path).resolved_master_key()
    assert (tmp_path / "master.key").stat().st_mode & 0o077 == 0


def test_configured_master_key_must_be_32_bytes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, master_key=base64.b64encode(b"short").decode())
    with pytest.raises(ValueError):
        settings.resolved_master_key()
