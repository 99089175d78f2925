"""Slow clients and connection floods, over real sockets against the API served by uvicorn as
`python -m api.serve` configures it: a body that stalls is answered 408 within
DURAPAY_REQUEST_BODY_TIMEOUT_SECONDS and the connection closed; past
DURAPAY_API_MAX_CONNECTIONS a request answers 503."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

from api.main import create_app
from api.serve import uvicorn_config
from core.settings import Settings
from tests.api.conftest import assert_eventually
from tests.stack import free_port

pytestmark = pytest.mark.api

BODY_TIMEOUT_SECONDS = 1.0


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """The app under a real uvicorn on a free loopback port, stopped on exit."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn_config(settings, host="127.0.0.1", port=port, app=create_app(settings))
    )
    task = asyncio.create_task(server.serve())
    try:
        await assert_eventually(lambda: _started(server, task), timeout=30)
        yield server, port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raises what stopped it
    return server.started


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        name.lower(): value.strip()
        for name, value in (line.split(":", 1) for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_a_body_that_stalls_is_408_within_the_bound_and_the_connection_closed(
    settings: Settings,
) -> None:
    bounded = settings.model_copy(update={"request_body_timeout_seconds": BODY_TIMEOUT_SECONDS})
    async with served(bounded) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            started = time.monotonic()
            writer.write(
                b"POST /payment-intents HTTP/1.1\r\nHost: durapay.test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"amountIn'
            )  # 10 of the 100 bytes, then nothing
            await writer.drain()
            status, headers, body = await asyncio.wait_for(_read_response(reader), timeout=10)
            elapsed = time.monotonic() - started
            assert status == 408, body
            assert json.loads(body)["error"] == {
                "type": "invalid_request_error",
                "code": "request_timeout",
                "message": json.loads(body)["error"]["message"],
                "param": None,
            }
            assert headers["connection"] == "close"
            assert headers["cache-control"] == "no-store"
            assert headers["request-id"].startswith("req_")
            assert BODY_TIMEOUT_SECONDS * 0.9 <= elapsed < BODY_TIMEOUT_SECONDS + 4
            # The server closed the connection: nothing more comes, not even another answer.
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        finally:
            writer.close()


async def test_a_body_that_arrives_in_time_is_answered(settings: Settings) -> None:
    bounded = settings.model_copy(update={"request_body_timeout_seconds": BODY_TIMEOUT_SECONDS})
    async with served(bounded) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            body = b'{"amountInCents": 100, "currency": "usd"}'
            writer.write(
                b"POST /payment-intents HTTP/1.1\r\nHost: durapay.test\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            await writer.drain()
            status, _, answer = await asyncio.wait_for(_read_response(reader), timeout=10)
            assert status == 401, answer  # unsigned: the body itself was received whole
        finally:
            writer.close()


async def test_past_the_connection_limit_a_request_is_503(settings: Settings) -> None:
    limited = settings.model_copy(update={"api_max_connections": 2})
    async with served(limited) as (server, port):
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await assert_eventually(lambda: _at_least(len(server.server_state.connections), 2))
            writer.write(b"GET /livez HTTP/1.1\r\nHost: durapay.test\r\n\r\n")
            await writer.drain()
            status, _, _ = await asyncio.wait_for(_read_response(reader), timeout=10)
            assert status == 503
            idle_writer.close()
            writer.close()
            await assert_eventually(lambda: _none_open(server))
            fresh_reader, fresh_writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                fresh_writer.write(b"GET /livez HTTP/1.1\r\nHost: durapay.test\r\n\r\n")
                await fresh_writer.drain()
                status, _, _ = await asyncio.wait_for(_read_response(fresh_reader), timeout=10)
                assert status == 200
            finally:
                fresh_writer.close()
        finally:
            idle_writer.close()
            writer.close()


async def _at_least(value: int, minimum: int) -> bool:
    return value >= minimum


async def _none_open(server: uvicorn.Server) -> bool:
    return not server.server_state.connections


async def test_past_the_in_flight_limit_a_request_is_503_with_retry_after_at_once(
    settings: Settings,
) -> None:
    """Two requests whose bodies are still on their way are being answered; a third is
    refused at once, as an error object with Retry-After, and probes still answer."""
    limited = settings.model_copy(
        update={
            "api_max_in_flight": 2,
            "api_max_connections": 10,
            "request_body_timeout_seconds": 30,
        }
    )
    async with served(limited) as (_, port):
        stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _, stalled_writer in stalled:
                stalled_writer.write(
                    b"POST /payment-intents HTTP/1.1\r\nHost: durapay.test\r\n"
                    b"Content-Length: 100\r\n\r\n{"
                )
                await stalled_writer.drain()

            async def refused() -> tuple[int, dict[str, str], bytes] | None:
                probe_reader, probe_writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    probe_writer.write(
                        b"GET /payment-intents HTTP/1.1\r\nHost: durapay.test\r\n\r\n"
                    )
                    await probe_writer.drain()
                    answer = await asyncio.wait_for(_read_response(probe_reader), timeout=10)
                finally:
                    probe_writer.close()
                return answer if answer[0] == 503 else None

            started = time.monotonic()
            status, headers, body = await assert_eventually(refused, timeout=10)
            assert time.monotonic() - started < 5  # at once, not after the stalled bodies
            error = json.loads(body)["error"]
            assert (status, error["type"], error["code"]) == (
                503,
                "api_error",
                "service_unavailable",
            )
            assert headers["retry-after"] == "1"
            assert headers["durapay-not-processed"] == "true"  # the SDK may send it again
            assert headers["cache-control"] == "no-store"
            assert headers["request-id"].startswith("req_")
            writer.write(b"GET /livez HTTP/1.1\r\nHost: durapay.test\r\n\r\n")
            await writer.drain()
            live, _, _ = await asyncio.wait_for(_read_response(reader), timeout=10)
            assert live == 200
        finally:
            writer.close()
            for _, stalled_writer in stalled:
                stalled_writer.close()
