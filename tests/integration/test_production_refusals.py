"""DURAPAY_ENV=production without DURAPAY_MASTER_KEY and DURAPAY_ADMIN_TOKEN: every Durapay
process refuses to start, as its operators launch it, and generates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import BIN, free_port

pytestmark = pytest.mark.integration

PROCESSES = {
    "api": [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
    ],
    "worker": [sys.executable, "-m", "workers.main"],
    "codec": [sys.executable, "-m", "api.codec_app"],
    "cli": [str(BIN / "durapay"), "migrate"],
    "dev": [str(BIN / "durapay"), "dev"],
}


@pytest.mark.parametrize("name", PROCESSES)
def test_production_process_refuses_to_start_on_generated_secrets(
    name: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DURAPAY_") and k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")
    }
    env.update(
        {
            "DURAPAY_ENV": "production",
            "DURAPAY_HOME": str(tmp_path / "home"),
            "DURAPAY_ADMIN_TOKEN": "given-token",
            "DURAPAY_CODEC_PORT": str(port),
            "DATABASE_URL": f"postgresql://u:p@127.0.0.1:{free_port()}/none",
            "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        }
    )
    argv = [a.format(port=port) for a in PROCESSES[name]]
    done = subprocess.run(
        argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=120, check=False
    )
    assert done.returncode != 0
    assert b"DURAPAY_MASTER_KEY must be set" in done.stdout + done.stderr
    assert not (tmp_path / "home").exists()
