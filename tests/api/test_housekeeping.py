"""The `durapay-housekeeping` schedule (workers/schedules.py, workflows/housekeeping.py): on the
session's Temporal dev server and PostgreSQL, with a worker of its own on its own task queue,
a triggered run deletes expired nonces, Idempotency-Key records past retention and card numbers
past theirs, in bounded batches until none is left, and nothing that is still current."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.housekeeping import HousekeepingActivities
from core.db.session import create_engine, session_factory
from core.settings import Settings
from tests.api.conftest import Merchant, assert_eventually
from workers.schedules import (
    HOUSEKEEPING_SCHEDULE_ID,
    ensure_schedule,
    housekeeping_schedule,
    schedules_paused,
)
from workflows.housekeeping import HousekeepingResult, HousekeepingWorkflow

pytestmark = pytest.mark.api

BATCH = 10
EXPIRED = 25  # of each kind: three batches of BATCH at least
RETENTION = timedelta(hours=1)


@pytest.fixture
async def housekeeping(settings: Settings, temporal_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """A schedule like the workers' (its own id), and a worker running its workflow; yields
    the schedule id. Its interval is long: the test triggers the run it looks at."""
    client: Client = temporal_env.client
    task_queue = f"housekeeping-{uuid.uuid4().hex[:8]}"
    schedule_id = f"{HOUSEKEEPING_SCHEDULE_ID}-{uuid.uuid4().hex[:8]}"
    engine = create_engine(settings.effective_database_url, pool_size=2)
    activities = HousekeepingActivities(
        engine=engine,
        sessions=session_factory(engine),
        idempotency_retention=RETENTION,
        batch_size=BATCH,
    )
    await ensure_schedule(
        client,
        schedule_id,
        housekeeping_schedule(
            settings.model_copy(
                update={"task_queue": task_queue, "housekeeping_interval_seconds": 86_400}
            )
        ),
    )
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[HousekeepingWorkflow],
        activities=[
            activities.delete_expired_nonces,
            activities.delete_expired_idempotency_records,
            activities.shred_stale_card_numbers,
        ],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield schedule_id
    await client.get_schedule_handle(schedule_id).delete()
    await engine.dispose()


async def _run_once(client: Client, schedule_id: str) -> HousekeepingResult:
    schedule = client.get_schedule_handle(schedule_id)
    await schedule.trigger()

    async def started() -> str | None:
        actions = (await schedule.describe()).info.recent_actions
        if not actions:
            return None
        action = actions[-1].action
        assert isinstance(action, ScheduleActionExecutionStartWorkflow)
        return action.workflow_id

    workflow_id = await assert_eventually(started)
    # The typed handle get_workflow_handle_for() gives, which mypy cannot infer there.
    return await client.get_workflow_handle(workflow_id, result_type=HousekeepingResult).result()


async def test_a_housekeeping_run_deletes_what_expired_in_bounded_batches(
    housekeeping: str,
    temporal_env: WorkflowEnvironment,
    merchant: Merchant,
    other_merchant: Merchant,
    db: asyncpg.Pool,
) -> None:
    key = f"pk_test_{uuid.uuid4().hex}"
    await db.executemany(
        "INSERT INTO request_nonce (public_key, nonce, expires_at) "
        "VALUES ($1, $2, now() + make_interval(secs => $3))",
        [(key, f"expired-{n}-{uuid.uuid4().hex}", -60.0) for n in range(EXPIRED)]
        + [(key, f"current-{uuid.uuid4().hex}", 600.0)],
    )
    retention = RETENTION.total_seconds()
    await db.executemany(
        "INSERT INTO idempotency_record (merchant_id, key, endpoint, request_hash, "
        "response_status, response_body, created_at) VALUES ($1, $2, 'POST /payment-intents', "
        "'x', 201, '{}', now() - make_interval(secs => $3))",
        [(other_merchant.id, f"expired-{n}", retention + 60) for n in range(EXPIRED)]
        + [(other_merchant.id, "current", retention - 60)],
    )
    await db.executemany(
        "INSERT INTO card_token (id, merchant_id, pan_ciphertext, brand, last4, exp_month, "
        "exp_year, created_at) VALUES ($1, $2, '\\x00', 'visa', '4242', 12, 2030, "
        "now() - make_interval(hours => $3))",
        [(f"card_stale_{n}_{uuid.uuid4().hex}", merchant.id, 25) for n in range(EXPIRED)]
        + [(f"card_held_{uuid.uuid4().hex}", merchant.id, 23)],
    )

    result = await _run_once(temporal_env.client, housekeeping)

    assert [
        row["nonce"].split("-")[0]
        for row in await db.fetch("SELECT nonce FROM request_nonce WHERE public_key = $1", key)
    ] == ["current"]
    assert [
        row["key"]
        for row in await db.fetch(
            "SELECT key FROM idempotency_record WHERE merchant_id = $1", other_merchant.id
        )
    ] == ["current"]
    held = await db.fetch(
        "SELECT id, brand, last4 FROM card_token WHERE merchant_id = $1 "
        "AND pan_ciphertext IS NOT NULL",
        merchant.id,
    )
    assert [row["id"].split("_")[1] for row in held] == ["held"]
    # Shredded, not deleted: brand and last4 stay for display.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM card_token WHERE merchant_id = $1 AND "
            "pan_deleted_at IS NOT NULL AND last4 = '4242'",
            merchant.id,
        )
        == EXPIRED
    )
    # Bounded batches: at least EXPIRED rows of each kind (other tests may have left expired
    # rows too), never more than BATCH a transaction, and the last batch found fewer.
    for pruned in (result.nonces, result.idempotency_records, result.card_numbers):
        assert pruned.deleted >= EXPIRED
        assert pruned.batches >= math.ceil(EXPIRED / BATCH)
        assert pruned.deleted < pruned.batches * BATCH


async def test_the_housekeeping_schedule_has_a_paused_gauge(
    temporal_env: WorkflowEnvironment,
) -> None:
    # No worker of the real stack runs here, so the real schedule is missing: "paused".
    assert (await schedules_paused(temporal_env.client))[HOUSEKEEPING_SCHEDULE_ID] is True
