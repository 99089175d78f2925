"""Fixtures: a real cardnet app under uvicorn on a free loopback port, plus a small client."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cardnet import Settings, create_app

# Short holds keep the suite fast while still outlasting the 0.3 s client timeouts used.
HOLD_SECONDS = 1.0
# Card 1091's status lag: short for speed, long enough that a query right after the commit
# surely falls inside it.
STATUS_LAG_SECONDS = 1.5
# Trickled answers: a piece every 1 s, far beyond the 0.4 s client timeouts used, yet a patient
# caller has the whole body (3 pieces) within 2 s.
TRICKLE_SECONDS = 1.0


class CardnetServer:
    """One cardnet process-equivalent: a uvicorn Server running in a thread."""

    def __init__(
        self,
        data_dir: Path,
        hold_seconds: float = HOLD_SECONDS,
        status_lag_seconds: float = STATUS_LAG_SECONDS,
    ) -> None:
        self.data_dir = data_dir
        self.hold_seconds = hold_seconds
        self.status_lag_seconds = status_lag_seconds
        self.trickle_seconds = TRICKLE_SECONDS
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def start(self) -> CardnetServer:
        # Binding the socket ourselves avoids racing another process for a "free" port.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings(
            hold_seconds=self.hold_seconds,
            status_lag_seconds=self.status_lag_seconds,
            trickle_seconds=self.trickle_seconds,
        )
        app = create_app(self.data_dir, settings)
        # uvicorn types the grace period as whole seconds; it waits any number of them.
        config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=0.2)  # type: ignore[arg-type]
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("cardnet server did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        return self

    def requests_in_flight(self) -> int:
        """Request tasks uvicorn is still running (a trickle that stopped has none)."""
        assert self._server is not None
        return len(self._server.server_state.tasks)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "cardnet server did not stop"
        self._server = self._thread = None


class Api:
    """Thin helpers over httpx for the cardnet protocol."""

    def __init__(
        self, base_url: str, hold_seconds: float, status_lag_seconds: float = STATUS_LAG_SECONDS
    ) -> None:
        self.base_url = base_url
        self.hold_seconds = hold_seconds
        self.status_lag_seconds = status_lag_seconds
        self.http = httpx.Client(base_url=base_url, timeout=10, trust_env=False)

    @staticmethod
    def ref(prefix: str = "op") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def primary(
        reference: str,
        number: str = "4242424242424242",
        amount: int = 1000,
        type_: str = "charge",
        currency: str = "usd",
    ) -> dict[str, Any]:
        return {
            "reference": reference,
            "type": type_,
            "amountInCents": amount,
            "currency": currency,
            "card": {"number": number, "expMonth": 12, "expYear": 2030, "cvc": "123"},
        }

    @staticmethod
    def child(
        reference: str, type_: str, parent: str, amount: int, currency: str = "usd"
    ) -> dict[str, Any]:
        return {
            "reference": reference,
            "type": type_,
            "amountInCents": amount,
            "currency": currency,
            "parentReference": parent,
        }

    def post(self, payload: dict[str, Any], timeout: float = 10) -> httpx.Response:
        return self.http.post("/v1/operations", json=payload, timeout=timeout)

    def status(self, reference: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/operations/{reference}")
        assert response.status_code == 200
        return response.json()

    def ledger(self, reference: str | None = None) -> list[dict[str, Any]]:
        params = {"reference": reference} if reference else None
        response = self.http.get("/ledger", params=params)
        assert response.status_code == 200
        return response.json()["data"]

    def wait_ledger(self, reference: str, within: float = 5.0) -> list[dict[str, Any]]:
        """Poll the ledger until the reference is committed (or the time is up)."""
        deadline = time.monotonic() + within
        while True:
            entries = self.ledger(reference)
            if entries or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)

    def wait_status(self, reference: str, wanted: str, within: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            body = self.status(reference)
            if body["status"] == wanted or time.monotonic() > deadline:
                return body
            time.sleep(0.05)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CardnetServer]:
    srv = CardnetServer(tmp_path_factory.mktemp("cardnet")).start()
    yield srv
    srv.stop()


@pytest.fixture
def api(server: CardnetServer) -> Iterator[Api]:
    client = Api(server.base_url, server.hold_seconds, server.status_lag_seconds)
    yield client
    # Faults are process-wide: never let one test's chaos leak into the next.
    client.http.delete("/faults")
    client.close()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[CardnetServer]:
    """A server of its own, for tests that stop and restart it on the same data dir."""
    srv = CardnetServer(tmp_path / "cardnet")
    yield srv
    srv.stop()


@pytest.fixture
def api_for() -> Iterator[Callable[[CardnetServer], Api]]:
    """Make clients for servers a test (re)starts itself; all are closed at the end."""
    clients: list[Api] = []

    def make(srv: CardnetServer) -> Api:
        clients.append(Api(srv.base_url, srv.hold_seconds, srv.status_lag_seconds))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
