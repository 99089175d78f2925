"""A worker's own HTTP port: `/metrics`, `/livez` and `/readyz`, on
DURAPAY_WORKER_METRICS_HOST : DURAPAY_WORKER_METRICS_PORT + DURAPAY_WORKER_INDEX.

`/metrics` is one exposition: ours (core/metrics.py: business counters, the gauges read from
Postgres, whether the Temporal Schedules are paused, process and Python) followed by the
Temporal SDK's. The SDK's Rust core serves its metrics on a port of its own
(`PrometheusConfig`); the worker binds it to loopback on a free port and reads it at each
scrape, so an operator scrapes one port per worker and gets the SDK's histograms exactly as
the SDK computes them. (The alternative, `MetricBuffer`, is experimental and would have us
rebuild the SDK's histograms and label sets in Python.)

`/livez` answers while the worker's event loop does (it serves this port, so a wedged loop
fails it); `/readyz` is 200 only when Postgres answers `SELECT 1` and Temporal its health check,
each within CHECK_SECONDS. Its body also carries `warnings` that need an operator but do not
stop the worker (a replication slot on a server that keeps its WAL without limit).

A deliberately small HTTP/1.1 server on asyncio: GET (and HEAD) of three paths, one request per
connection, nothing read but the request head. It runs in the worker's own loop, so its checks
use the worker's own database pool and Temporal client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig

from core.metrics import DATABASE_GAUGES, SCHEDULE_GAUGES, WORKER_REGISTRY, ScheduleStates
from core.readiness import (
    CHECK_SECONDS,
    Check,
    ReadinessWarning,
    postgres_ok,
    readiness,
    slot_wal_unbounded,
    temporal_ok,
)
from core.temporal_client import start_runtime_with_metrics

log = logging.getLogger("durapay.worker")

# A client that has not sent its request head by then is dropped (a slow-loris guard).
REQUEST_HEAD_SECONDS = 5.0
REQUEST_HEAD_LIMIT = 8192
SDK_BIND_ATTEMPTS = 5


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def start_sdk_metrics() -> str:
    """Create the process's Temporal runtime with the SDK's Prometheus exporter on a free
    loopback port, and return the URL of its metrics. A port taken between picking and binding
    fails the runtime's creation (ValueError): another is tried."""
    attempts_left = SDK_BIND_ATTEMPTS
    while True:
        address = f"127.0.0.1:{_free_loopback_port()}"
        try:
            # Seconds, like every other duration a Prometheus user meets.
            start_runtime_with_metrics(
                PrometheusConfig(bind_address=address, durations_as_seconds=True)
            )
        except ValueError:
            attempts_left -= 1
            if attempts_left == 0:
                raise
            continue
        return f"http://{address}/metrics"


def postgres_check(sessions: async_sessionmaker[AsyncSession]) -> Check:
    return lambda: postgres_ok(sessions)


def temporal_check(client: Client) -> Check:
    async def this_client() -> Client:
        return client

    return lambda: temporal_ok(this_client)


class HealthServer:
    """Serves the three paths until `close`. Start it with `HealthServer.start`."""

    def __init__(
        self,
        *,
        checks: Mapping[str, Check],
        sessions: async_sessionmaker[AsyncSession],
        sdk_metrics_url: str | None,
        schedule_states: ScheduleStates | None = None,
    ) -> None:
        self._checks = dict(checks)
        self._warnings: dict[str, ReadinessWarning] = {
            "replication_slot_wal": lambda: slot_wal_unbounded(sessions)
        }
        self._sessions = sessions
        self._schedule_states = schedule_states
        self._sdk_metrics_url = sdk_metrics_url
        self._http = httpx.AsyncClient(timeout=CHECK_SECONDS, trust_env=False)
        self._server: asyncio.Server | None = None

    @classmethod
    async def start(
        cls,
        host: str,
        port: int,
        *,
        checks: Mapping[str, Check],
        sessions: async_sessionmaker[AsyncSession],
        sdk_metrics_url: str | None,
        schedule_states: ScheduleStates | None = None,
    ) -> HealthServer:
        server = cls(
            checks=checks,
            sessions=sessions,
            sdk_metrics_url=sdk_metrics_url,
            schedule_states=schedule_states,
        )
        server._server = await asyncio.start_server(
            server._serve, host, port, limit=REQUEST_HEAD_LIMIT
        )
        return server

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._http.aclose()

    # ---- the three answers -----------------------------------------------------------------
    async def answer(self, path: str) -> Answer:
        if path == "/livez":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            return await self._readiness()
        if path == "/metrics":
            return Answer(200, CONTENT_TYPE_PLAIN_0_0_4, await self._exposition())
        return _json(404, {"error": "not found"})

    async def _readiness(self) -> Answer:
        body, down = await readiness(self._checks, self._warnings)
        return _json(503 if down else 200, body)

    async def _exposition(self) -> bytes:
        # Postgres and Temporal are read side by side: a scrape waits for the slower only.
        await asyncio.gather(self._refresh_database_gauges(), self._refresh_schedule_gauges())
        ours = generate_latest(WORKER_REGISTRY)
        return ours + await self._sdk_exposition()

    async def _refresh_database_gauges(self) -> None:
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                await DATABASE_GAUGES.refresh(self._sessions)
        except Exception as error:  # noqa: BLE001 (the gauges are left out of this scrape)
            log.warning("metrics: Postgres gauges unavailable (%s)", type(error).__name__)

    async def _refresh_schedule_gauges(self) -> None:
        if self._schedule_states is not None:  # bounded, and never raises (core/metrics.py)
            await SCHEDULE_GAUGES.refresh(self._schedule_states)

    async def _sdk_exposition(self) -> bytes:
        if self._sdk_metrics_url is None:
            return b""
        try:
            response = await self._http.get(self._sdk_metrics_url)
            response.raise_for_status()
        except httpx.HTTPError as error:
            log.warning(
                "metrics: the Temporal SDK's metrics unavailable (%s)", type(error).__name__
            )
            return b""
        return response.content

    # ---- HTTP ------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_HEAD_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            if method not in ("GET", "HEAD"):
                answer = _json(405, {"error": "method not allowed"})
            elif path is None:
                answer = _json(400, {"error": "bad request"})
            else:
                answer = await self.answer(path)
            writer.write(_response_head(answer) + (answer.body if method != "HEAD" else b""))
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass  # the client went away or never finished its request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def _request_line(head: bytes) -> tuple[str, str | None]:
    """(method, path without its query) of `GET /metrics?x HTTP/1.1`; path None if malformed."""
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return (parts[0] if parts else "", None)
    return parts[0], parts[1].split("?", 1)[0]


def _response_head(answer: Answer) -> bytes:
    return (
        f"HTTP/1.1 {answer.status} {REASONS[answer.status]}\r\n"
        f"Content-Type: {answer.content_type}\r\n"
        f"Content-Length: {len(answer.body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")


def _json(status: int, body: object) -> Answer:
    return Answer(status, "application/json", json.dumps(body).encode())


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
