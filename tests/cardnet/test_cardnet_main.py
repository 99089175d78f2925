"""The `python -m cardnet` entry point and its environment defaults."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cardnet.__main__ import _parse_args, settings_from_args
from cardnet.settings import Settings, default_data_dir, default_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_defaults_from_environment() -> None:
    assert default_port({}) == 8081
    assert default_port({"DURAPAY_CARDNET_PORT": "9000"}) == 9000
    assert default_data_dir({}) == Path(".durapay/cardnet")
    assert default_data_dir({"DURAPAY_HOME": "/h"}) == Path("/h/cardnet")
    env = {"DURAPAY_HOME": "/h", "DURAPAY_CARDNET_DATA_DIR": "/d"}
    assert default_data_dir(env) == Path("/d")


def test_status_lag_and_trickle_settings_from_environment() -> None:
    defaults = Settings.from_env({})
    assert defaults.status_lag_seconds == 30
    assert defaults.trickle_seconds is None
    assert defaults.trickle_pause_seconds == defaults.hold_seconds == 15
    env = {
        "DURAPAY_CARDNET_STATUS_LAG_SECONDS": "2.5",
        "DURAPAY_CARDNET_TRICKLE_SECONDS": "4",
        "DURAPAY_CARDNET_HOLD_SECONDS": "3",
    }
    settings = Settings.from_env(env)
    assert (settings.status_lag_seconds, settings.trickle_pause_seconds) == (2.5, 4)
    assert Settings.from_env({"DURAPAY_CARDNET_HOLD_SECONDS": "3"}).trickle_pause_seconds == 3


def test_flags_win_over_the_environment() -> None:
    env = {"DURAPAY_CARDNET_STATUS_LAG_SECONDS": "2.5", "DURAPAY_CARDNET_TRICKLE_SECONDS": "4"}
    args = _parse_args(
        ["--status-lag-seconds", "0.5", "--trickle-seconds", "1", "--hold-seconds", "2"]
    )
    settings = settings_from_args(args, env)
    assert (settings.status_lag_seconds, settings.trickle_pause_seconds, settings.hold_seconds) == (
        0.5,
        1,
        2,
    )
    assert settings_from_args(_parse_args([]), env).status_lag_seconds == 2.5


@pytest.mark.parametrize("raw", ["-1", "nan", "inf", "soon"])
def test_invalid_durations_stop_the_start(raw: str) -> None:
    with pytest.raises(ValueError):
        Settings.from_env({"DURAPAY_CARDNET_STATUS_LAG_SECONDS": raw})
    with pytest.raises(SystemExit):
        _parse_args(["--trickle-seconds", raw])


def test_python_dash_m_cardnet_serves_on_env_port(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DURAPAY_CARDNET_PORT": str(port),
        "DURAPAY_CARDNET_DATA_DIR": str(tmp_path / "data"),
        "DURAPAY_CARDNET_FAULTS": '{"dropRate": 0.25}',
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardnet", "--hold-seconds", "0.5", "--log-level", "warning"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                assert httpx.get(f"{base}/healthz", trust_env=False).json() == {"status": "ok"}
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "cardnet did not come up"
                time.sleep(0.05)
        assert httpx.get(f"{base}/faults", trust_env=False).json()["dropRate"] == 0.25
        assert (tmp_path / "data" / "ledger.sqlite3").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            if proc.stderr:
                proc.stderr.close()
