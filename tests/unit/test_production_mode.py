"""DURAPAY_ENV=production: processes refuse generated secrets, and the local stack starts no
codec listener and creates no demo merchant."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import main as cli_main
from cli.demo_merchant import NoDemoMerchant, demo_merchant
from cli.devstack import DevStack
from core.settings import Settings, get_settings

# Production refuses weak secrets (tests/unit/test_production_settings.py): these are not.
MASTER_KEY = base64.b64encode(hashlib.sha256(b"test_production_mode key").digest()).decode()
GIVEN_TOKEN = "given-" + hashlib.sha256(b"test_production_mode token").hexdigest()[:40]


def stack_settings(tmp_path: Path, env: str) -> Settings:
    return Settings(
        env=env,
        home=tmp_path / "home",
        master_key=MASTER_KEY,
        admin_token=GIVEN_TOKEN,
        codec_port=18089,
        temporal_tls_cert="/certs/cert.pem",
        temporal_tls_key="/certs/key.pem",
    )


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def test_dev_stack_runs_the_codec_for_its_web_ui_outside_production(tmp_path: Path) -> None:
    stack = DevStack(stack_settings(tmp_path, "development"))
    try:
        codec = next(c for c in stack._services() if c.name == "codec")
        assert codec.argv[1:] == ["-m", "api.codec_app"]
        argv = stack._temporal_argv()
        assert argv[argv.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:18089/codec"
    finally:
        await stack._http.aclose()


async def test_production_stack_has_no_codec_listener(tmp_path: Path) -> None:
    stack = DevStack(stack_settings(tmp_path, "production"))
    try:
        assert "codec" not in [c.name for c in stack._services()]
        assert "--ui-codec-endpoint" not in stack._temporal_argv()
    finally:
        await stack._http.aclose()


async def test_production_has_no_demo_merchant(tmp_path: Path) -> None:
    with pytest.raises(NoDemoMerchant, match="durapay merchant create"):
        await demo_merchant(stack_settings(tmp_path, "production"))
    assert not (tmp_path / "home").exists()


def test_cli_refuses_to_start_in_production_without_given_secrets(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fresh_settings: None,
) -> None:
    monkeypatch.setenv("DURAPAY_ENV", "production")
    monkeypatch.setenv("DURAPAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DURAPAY_ADMIN_TOKEN", GIVEN_TOKEN)
    monkeypatch.delenv("DURAPAY_MASTER_KEY", raising=False)
    assert cli_main.main(["migrate"]) == 2
    assert "DURAPAY_MASTER_KEY must be set" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
