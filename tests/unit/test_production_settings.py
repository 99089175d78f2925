"""DURAPAY_ENV=production refuses weak settings at start, naming the variable and the fix;
development takes the same values."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.settings import Settings

STRONG_KEY = base64.b64encode(hashlib.sha256(b"production settings key").digest()).decode()
OTHER_STRONG_KEY = base64.b64encode(hashlib.sha256(b"a retired key").digest()).decode()
STRONG_TOKEN = hashlib.sha256(b"production settings token").hexdigest()  # 64 hex characters


def _production(tmp_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "production",
        "home": tmp_path / "home",
        "master_key": STRONG_KEY,
        "admin_token": STRONG_TOKEN,
        # Production also needs an authenticated Temporal connection
        # (tests/unit/test_production_temporal.py).
        "temporal_api_key": "tc-key",
        **changes,
    }
    return Settings(**values)


def _refused(tmp_path: Path, variable: str, fix: str, **changes: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        _production(tmp_path, **changes)
    message = str(refused.value)
    assert variable in message and fix in message, message
    # Development starts with the same values: only production refuses them.
    Settings(**{"home": tmp_path / "home", **changes})


def test_production_starts_on_strong_settings(tmp_path: Path) -> None:
    settings = _production(tmp_path, retired_master_keys=OTHER_STRONG_KEY)
    assert settings.webhook_allowed_ports == "443"
    # A random token of exactly the minimum length passes, as `openssl rand -hex 16` gives.
    _production(tmp_path, admin_token=hashlib.sha256(b"short but random").hexdigest()[:32])


@pytest.mark.parametrize(
    "token",
    [
        "a",
        "given-token",
        hashlib.sha256(b"x").hexdigest()[:31],  # short
        "a" * 64,
        "ab" * 32,
        "abcd" * 16,
        "Password1" * 4,  # long but repeated
        "abcdefghijklmnopqrstuvwxyz0123456789",  # a run
    ],
)
def test_production_refuses_a_short_or_guessable_admin_token(tmp_path: Path, token: str) -> None:
    _refused(tmp_path, "DURAPAY_ADMIN_TOKEN", "openssl rand", admin_token=token)


@pytest.mark.parametrize(
    "key", [bytes(32), b"\xff" * 32, b"ab" * 16, bytes(range(32)), b"0123456789abcdef" * 2]
)
def test_production_refuses_a_trivially_weak_master_key(tmp_path: Path, key: bytes) -> None:
    _refused(
        tmp_path,
        "DURAPAY_MASTER_KEY",
        "openssl rand -base64 32",
        master_key=base64.b64encode(key).decode(),
    )


def test_production_refuses_a_trivially_weak_retired_master_key(tmp_path: Path) -> None:
    weak = base64.b64encode(bytes(32)).decode()
    _refused(
        tmp_path,
        "DURAPAY_RETIRED_MASTER_KEYS (key 2)",
        "openssl rand -base64 32",
        retired_master_keys=f"{OTHER_STRONG_KEY},{weak}",
    )


def test_production_refuses_webhooks_to_private_networks(tmp_path: Path) -> None:
    _refused(
        tmp_path,
        "DURAPAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS",
        "unset it",
        webhook_allow_private_networks=True,
    )


@pytest.mark.parametrize("rate", [0, -1])
def test_production_refuses_no_per_key_rate_limit(tmp_path: Path, rate: float) -> None:
    _refused(tmp_path, "DURAPAY_RATE_LIMIT_PER_SECOND", "above 0", rate_limit_per_second=rate)


def test_production_refuses_no_admin_rate_limit(tmp_path: Path) -> None:
    _refused(
        tmp_path, "DURAPAY_ADMIN_RATE_LIMIT_PER_MINUTE", "above 0", admin_rate_limit_per_minute=0
    )


def test_production_refuses_no_body_timeout(tmp_path: Path) -> None:
    _refused(
        tmp_path, "DURAPAY_REQUEST_BODY_TIMEOUT_SECONDS", "above 0", request_body_timeout_seconds=0
    )


def test_production_refuses_no_connection_limit(tmp_path: Path) -> None:
    _refused(tmp_path, "DURAPAY_API_MAX_CONNECTIONS", "above 0", api_max_connections=0)


@pytest.mark.parametrize("in_flight", [0, 1000, 5000])
def test_production_refuses_an_in_flight_limit_the_connection_limit_would_preempt(
    tmp_path: Path, in_flight: int
) -> None:
    _refused(
        tmp_path,
        "DURAPAY_API_MAX_IN_FLIGHT",
        "below DURAPAY_API_MAX_CONNECTIONS",
        api_max_in_flight=in_flight,
        api_max_connections=1000,
    )


@pytest.mark.parametrize("ports", ["80,443", "*", "8443", "443,8443"])
def test_production_refuses_webhook_ports_other_than_443(tmp_path: Path, ports: str) -> None:
    _refused(
        tmp_path,
        "DURAPAY_WEBHOOK_ALLOWED_PORTS",
        "DURAPAY_WEBHOOK_ALLOW_NONSTANDARD_PORTS",
        webhook_allowed_ports=ports,
    )


def test_production_takes_other_webhook_ports_when_told_so(tmp_path: Path) -> None:
    _production(tmp_path, webhook_allowed_ports="443,8443", webhook_allow_nonstandard_ports=True)


@pytest.mark.parametrize("seconds", [0, 301, 3600])
def test_production_refuses_a_signature_window_beyond_300_seconds(
    tmp_path: Path, seconds: int
) -> None:
    _refused(
        tmp_path,
        "DURAPAY_SIGNATURE_TOLERANCE_SECONDS",
        "1 to 300",
        signature_tolerance_seconds=seconds,
    )


def test_production_names_every_weak_setting_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        _production(
            tmp_path, admin_token="a", rate_limit_per_second=0, webhook_allow_private_networks=True
        )
    message = str(refused.value)
    for variable in (
        "DURAPAY_ADMIN_TOKEN",
        "DURAPAY_RATE_LIMIT_PER_SECOND",
        "DURAPAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS",
    ):
        assert variable in message
    assert STRONG_KEY not in message  # names the variable, never the value
