from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from core.secret_files import InsecurePermissionsError, write_secret
from core.settings import LocalPostgresPasswordMissing, Settings, to_asyncpg_url


def test_defaults_match_the_documented_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DURAPAY_API_PORT",
        "DURAPAY_CARDNET_PORT",
        "DURAPAY_TEMPORAL_PORT",
        "DURAPAY_TEMPORAL_UI_PORT",
        "DURAPAY_WORKERS",
        "DURAPAY_HOME",
        "DATABASE_URL",
        "TEMPORAL_ADDRESS",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (
        settings.api_port,
        settings.cardnet_port,
        settings.temporal_port,
        settings.temporal_ui_port,
        settings.workers,
    ) == (8000, 8081, 7233, 8233, 1)
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


def test_admin_token_and_master_key_are_generated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


# Production refuses weak secrets (tests/unit/test_production_settings.py): these are not.
KEY_BYTES = hashlib.sha256(b"test_settings master key").digest()
MASTER_KEY = base64.b64encode(KEY_BYTES).decode()
GIVEN_TOKEN = "given-" + hashlib.sha256(b"test_settings admin token").hexdigest()[:40]


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"admin_token": GIVEN_TOKEN}, "DURAPAY_MASTER_KEY"),
        ({"master_key": MASTER_KEY}, "DURAPAY_ADMIN_TOKEN"),
        ({}, "DURAPAY_MASTER_KEY and DURAPAY_ADMIN_TOKEN"),
    ],
)
def test_production_refuses_to_start_on_generated_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: dict[str, Any], missing: str
) -> None:
    monkeypatch.delenv("DURAPAY_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("DURAPAY_MASTER_KEY", raising=False)
    monkeypatch.setenv("DURAPAY_ENV", "production")
    with pytest.raises(ValidationError, match=f"{missing} must be set"):
        Settings(home=tmp_path / "home", **given)
    assert not (tmp_path / "home").exists()


def test_production_uses_the_given_secrets_and_writes_nothing(tmp_path: Path) -> None:
    settings = Settings(
        env="production",
        home=tmp_path / "home",
        master_key=MASTER_KEY,
        admin_token=GIVEN_TOKEN,
        temporal_api_key="tc-key",
    )
    assert settings.resolved_master_key() == KEY_BYTES
    assert settings.resolved_admin_token() == GIVEN_TOKEN
    assert not (tmp_path / "home").exists()
    # Settings made without validation still never generate one.
    unchecked = Settings.model_construct(env="production", home=tmp_path / "home")
    with pytest.raises(ValueError, match="DURAPAY_MASTER_KEY must be set"):
        unchecked.resolved_master_key()
    with pytest.raises(ValueError, match="DURAPAY_ADMIN_TOKEN must be set"):
        unchecked.resolved_admin_token()
    assert not (tmp_path / "home").exists()


def test_state_dir_is_created_0700_and_secret_files_0600(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    settings = Settings(home=home)
    settings.resolved_admin_token()
    settings.resolved_master_key()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("admin-token", "master.key"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name


def test_state_dir_others_can_reach_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    Settings(home=home).resolved_admin_token()
    home.chmod(0o755)
    with pytest.raises(InsecurePermissionsError, match=f"chmod 700 {home}"):
        Settings(home=home).resolved_admin_token()
    with pytest.raises(InsecurePermissionsError):  # nor is a new secret written into it
        Settings(home=home).resolved_master_key()
    assert not (home / "master.key").exists()


def test_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Settings(home=home).resolved_master_key()
    (home / "master.key").chmod(0o644)
    with pytest.raises(InsecurePermissionsError, match=f"chmod 600 {home / 'master.key'}"):
        Settings(home=home).resolved_master_key()


def test_local_database_url_carries_the_password_url_encoded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_secret(home / "postgres-password", "p@ss/w:rd%?")
    settings = Settings(home=home, postgres_port=5555)
    assert settings.effective_database_url == (
        "postgresql+asyncpg://postgres:p%40ss%2Fw%3Ard%25%3F@127.0.0.1:5555/durapay"
    )
    assert make_url(settings.effective_database_url).password == "p@ss/w:rd%?"
    assert settings.local_postgres_url("postgres").endswith("@127.0.0.1:5555/postgres")
    # An external database is used as given.
    external = Settings(home=home, database_url="postgresql://u:p@db:5432/pay")
    assert external.effective_database_url == "postgresql+asyncpg://u:p@db:5432/pay"


def test_local_database_url_without_a_password_says_where_it_looked(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(LocalPostgresPasswordMissing, match="postgres-password.*durapay dev"):
        settings.effective_database_url  # noqa: B018 (the property is what raises)


def test_codec_listener_defaults_to_loopback_and_the_old_switch_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DURAPAY_CODEC_HOST", "DURAPAY_CODEC_PORT", "DURAPAY_CODEC_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.codec_host, settings.codec_port, settings.codec_token) == (
        "127.0.0.1",
        8089,
        None,
    )
    assert "codec_endpoint_enabled" not in Settings.model_fields
