"""A create whose database connection dies under it (Postgres killed or restarted, its backend
terminated) answers 503 with Retry-After, like every request during an outage, never 500, and
leaves nothing half-done: no intent, event or delivery, and an Idempotency-Key a retry can use.

The connection is cut with `pg_terminate_backend` from a second connection, at each point a
create can meet it: a pooled connection that died since its last use (checkout), the create's
INSERT, the stored answer's UPDATE after it, and the COMMIT. To hold the create at a point, a
trigger on the test's own database waits for an advisory lock this test holds; the backend
waiting on it is the one terminated. The triggers wait only while the lock is held."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from core.settings import Settings
from tests.api.app_instances import app_instance
from tests.api.conftest import Merchant, assert_eventually, onboard

pytestmark = pytest.mark.api

HOLD_LOCK = 7_314_001  # the advisory lock the triggers wait on
# Each point's trigger: a statement of the create's transaction (or its COMMIT) waits on it.
HOLD_TRIGGERS = {
    "insert": "CREATE TRIGGER hold BEFORE INSERT ON payment_intent "
    "FOR EACH ROW EXECUTE FUNCTION wait_for_hold()",
    "stored_answer": "CREATE TRIGGER hold BEFORE UPDATE ON idempotency_record "
    "FOR EACH ROW WHEN (NEW.response_status IS NOT NULL) "
    "EXECUTE FUNCTION wait_for_hold()",
    "commit": "CREATE CONSTRAINT TRIGGER hold AFTER INSERT ON payment_intent "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_for_hold()",
}
WAIT_FOR_HOLD = f"""
CREATE FUNCTION wait_for_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared({HOLD_LOCK});
  RETURN NEW;  -- BEFORE: the row goes ahead; AFTER: ignored
END $$
"""
TABLES_OF_A_CREATE = ("payment_intent", "event", "webhook_delivery")


@pytest.fixture
async def admin(scratch_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The second connection: sets the holds up, holds them and terminates backends."""
    connection = await asyncpg.connect(scratch_url)
    yield connection
    await connection.close()


@pytest.fixture
async def api(settings: Settings, scratch_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app of its own on the test's own database, whose backends are the only ones there."""
    async with app_instance(settings, database_url=scratch_url) as http:
        yield http


async def _subscribed_merchant(api: httpx.AsyncClient) -> Merchant:
    """A merchant with a webhook endpoint, so a create also plans a delivery."""
    merchant = await onboard(api)
    response = await merchant.post(
        "/webhook-endpoints", {"url": "https://1.1.1.1/hooks", "enabledEvents": ["*"]}
    )
    assert response.status_code == 201, response.text
    return merchant


async def _create(merchant: Merchant, key: str | None) -> httpx.Response:
    return await merchant.post(
        "/payment-intents", {"amountInCents": 1234, "currency": "usd"}, idempotency_key=key
    )


async def _held_backend(admin: asyncpg.Connection) -> int | None:
    return await admin.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )


async def _nothing_written(admin: asyncpg.Connection, merchant: Merchant) -> dict[str, int]:
    return {
        table: await admin.fetchval(
            f"SELECT count(*) FROM {table} WHERE merchant_id = $1", merchant.id
        )
        for table in TABLES_OF_A_CREATE
    }


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "service_unavailable"


@pytest.mark.parametrize(
    ("point", "key"),
    [
        ("insert", True),
        ("insert", False),
        ("stored_answer", True),  # no key: nothing stored
        ("commit", True),
        ("commit", False),
    ],
)
async def test_a_create_whose_connection_dies_mid_transaction_is_503_and_leaves_nothing(
    api: httpx.AsyncClient, admin: asyncpg.Connection, point: str, key: bool
) -> None:

    merchant = await _subscribed_merchant(api)
    await admin.execute(WAIT_FOR_HOLD)
    await admin.execute(HOLD_TRIGGERS[point])
    idempotency_key = f"create-{uuid.uuid4().hex}" if key else None
    await admin.execute("SELECT pg_advisory_lock($1)", HOLD_LOCK)
    create = asyncio.create_task(_create(merchant, idempotency_key))
    try:
        backend = await assert_eventually(lambda: _held_backend(admin))
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
        response = await create
    finally:
        await admin.execute("SELECT pg_advisory_unlock($1)", HOLD_LOCK)
        create.cancel()

    _assert_unavailable(response)
    assert await _nothing_written(admin, merchant) == dict.fromkeys(TABLES_OF_A_CREATE, 0)
    answered = await admin.fetchval(
        "SELECT count(*) FROM idempotency_record WHERE merchant_id = $1 "
        "AND response_status IS NOT NULL",
        merchant.id,
    )
    assert answered == 0  # the 503 is not stored: the key is free for the retry
    retried = await _create(merchant, idempotency_key)
    assert retried.status_code == 201, retried.text
    assert (await _nothing_written(admin, merchant))["payment_intent"] == 1


async def test_a_create_on_a_pooled_connection_that_died_since_its_last_use_is_503(
    api: httpx.AsyncClient, admin: asyncpg.Connection
) -> None:
    merchant = await _subscribed_merchant(api)
    # The app's pooled connections, idle and used a moment ago (so handed out unpinged).
    idle = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    assert idle
    for row in idle:
        await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])

    key = f"create-{uuid.uuid4().hex}"
    response = await _create(merchant, key)

    _assert_unavailable(response)
    assert await _nothing_written(admin, merchant) == dict.fromkeys(TABLES_OF_A_CREATE, 0)
    retried = await _create(merchant, key)
    assert retried.status_code == 201, retried.text
