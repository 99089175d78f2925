"""The abuse limits over real HTTP, with two more API processes beside the stack's own, as an
operator scaling the API out would run them: one rate-limit bucket per key across processes
(it lives in Postgres), and the body limit before anything reads a body."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import DurapayClient
from tests.stack import RunningStack, free_port, stop_process

pytestmark = pytest.mark.integration

# One request in a burst (the minimum), then a token every 100 s: the second request is
# refused however slowly the machine runs.
SLOW_RATE = "0.01"


@contextmanager
def api_process(stack: RunningStack, log: Path, **env: str) -> Iterator[str]:
    """One more API process on the stack's database and Temporal (as `durapay dev` starts its
    own), with `env` on top; yields its URL, stops it at the end."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            env={**stack.env, "DURAPAY_API_PORT": str(port), **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process)


@pytest.fixture
def two_api_processes(stack: RunningStack, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with (
        api_process(
            stack, tmp_path / "api-a.log", DURAPAY_RATE_LIMIT_PER_SECOND=SLOW_RATE
        ) as first,
        api_process(
            stack, tmp_path / "api-b.log", DURAPAY_RATE_LIMIT_PER_SECOND=SLOW_RATE
        ) as second,
    ):
        yield first, second


@pytest.fixture
async def clients(
    two_api_processes: tuple[str, str], merchant: dict[str, Any]
) -> AsyncIterator[tuple[DurapayClient, DurapayClient]]:
    first, second = two_api_processes
    async with (
        DurapayClient(first, merchant["publicKey"], merchant["secretKey"]) as a,
        DurapayClient(second, merchant["publicKey"], merchant["secretKey"]) as b,
    ):
        yield a, b


async def test_two_api_processes_share_one_bucket_per_key(
    clients: tuple[DurapayClient, DurapayClient],
) -> None:
    on_first, on_second = clients
    assert (await on_first.get("/payment-intents")).status_code == 200
    for client in (on_second, on_first):  # the other process knows the burst is spent
        refused = await client.get("/payment-intents")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["Retry-After"]) <= 100
        assert refused.headers["Cache-Control"] == "no-store"


async def test_a_chunked_body_over_the_limit_is_413_over_real_http(
    two_api_processes: tuple[str, str],
) -> None:
    first, _ = two_api_processes

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 8192

    async with httpx.AsyncClient(base_url=first, timeout=30) as http:
        response = await http.post(
            "/payment-intents", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"
        declared = await http.post("/merchants", content=b" " * 70_000)
        assert declared.status_code == 413, declared.text
