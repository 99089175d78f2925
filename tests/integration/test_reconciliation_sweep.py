"""The reconciliation sweep on the real stack: schedule, `durapay reconcile`, report, events, logs,
and the open items (one per problem until resolved; list, resolve, cleared by a sweep).

The stack is shared by the whole session and other tests charge concurrently, so every
assertion is filtered to the references and intents made here; nothing asserts a clean ledger.
A scheduled sweep may run between two steps here, so which run opened an item is not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    WorkflowExecutionStatus,
)

from activities.reconciliation import ReconcileWindowInput, ReconciliationActivities
from cli import reconcile as reconcile_cli
from client import DurapayClient
from core.db.migrate import downgrade, upgrade
from core.db.session import create_engine, session_factory
from core.settings import Settings, to_asyncpg_url
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, charge
from tests.stack import RunningStack
from workers.schedules import RECONCILIATION_SCHEDULE_ID, ensure_reconciliation_schedule
from workflows.reconciliation import ReconciliationSweepResult

DURAPAY = Path(sys.executable).parent / "durapay"
RUN_ID = re.compile(r"^reconciliation (recon_[0-9a-f]{24}) \(manual\)", re.MULTILINE)


@dataclasses.dataclass
class Planted:
    """The discrepancies this module makes, one of each kind, plus a clean charge."""

    network_only: str  # approved at the network under a reference we never recorded
    ours_only: str  # succeeded here, never sent to the network
    ours_only_intent: str
    mismatch: str  # succeeded here for 1000, approved at the network for 999


@dataclasses.dataclass
class Sweep:
    exit_code: int
    stdout: str
    stderr: str
    run_id: str


async def _network_charge(cardnet: httpx.AsyncClient, reference: str, amount: int) -> None:
    """Charge straight at the simulator. Same reference on retry: a chaos run's faults may
    answer 503 or drop the answer, and the network charges a reference once."""
    body = {
        "reference": reference,
        "type": "charge",
        "amountInCents": amount,
        "currency": "usd",
        "card": CARD_4242,
    }
    for _ in range(20):
        try:
            response = await cardnet.post("/v1/operations", json=body)
        except httpx.TransportError:
            continue
        if response.status_code == 200:
            assert response.json()["status"] == "approved", response.text
            return
    raise AssertionError(f"the simulator never committed {reference}")


async def _insert_succeeded_transaction(
    db: asyncpg.Pool, intent: dict[str, Any], merchant_id: str, reference: str, amount: int
) -> None:
    # Written behind the workflow's back: the books say succeeded, whatever the network knows.
    await db.execute(
        'INSERT INTO "transaction" (id, merchant_id, payment_intent_id, type, amount_in_cents, '
        "currency, status, network_reference) "
        "VALUES ($1, $2, $3, 'charge', $4, 'usd', 'succeeded', $1)",
        reference,
        merchant_id,
        intent["id"],
        amount,
    )


async def _run_reconcile(stack: RunningStack, *args: str) -> Sweep:
    process = await asyncio.create_subprocess_exec(
        str(DURAPAY),
        "reconcile",
        *args,
        env=stack.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    out, err = stdout.decode(), stderr.decode()
    found = RUN_ID.search(out)
    assert process.returncode is not None
    return Sweep(process.returncode, out, err, found.group(1) if found else "")


@pytest.fixture(scope="module")
async def planted(
    durapay: DurapayClient, merchant: dict[str, Any], db: asyncpg.Pool, cardnet: httpx.AsyncClient
) -> Planted:
    tag = uuid.uuid4().hex[:12]
    network_only, mismatch = f"ext_recon_{tag}", f"txn_recon_mismatch_{tag}"
    await _network_charge(cardnet, network_only, 777)

    ours_only_intent = await create_intent(durapay, amount=1500)
    await _insert_succeeded_transaction(
        db, ours_only_intent, merchant["id"], f"txn_recon_ours_{tag}", 1500
    )

    mismatch_intent = await create_intent(durapay, amount=1000)
    await _insert_succeeded_transaction(db, mismatch_intent, merchant["id"], mismatch, 1000)
    await _network_charge(cardnet, mismatch, 999)
    return Planted(
        network_only=network_only,
        ours_only=f"txn_recon_ours_{tag}",
        ours_only_intent=ours_only_intent["id"],
        mismatch=mismatch,
    )


@pytest.fixture(scope="module")
async def sweep(stack: RunningStack, planted: Planted) -> Sweep:
    return await _run_reconcile(stack, "--window-seconds", "900")


# Module-scoped fixtures above build on the session's function-scoped `durapay`/`merchant`.
@pytest.fixture(scope="module")
async def merchant(admin: httpx.AsyncClient) -> dict[str, Any]:
    response = await admin.post("/merchants", json={"name": f"Recon {uuid.uuid4().hex[:6]}"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
async def durapay(stack: RunningStack, merchant: dict[str, Any]) -> AsyncIterator[DurapayClient]:
    async with DurapayClient(stack.api_url, merchant["publicKey"], merchant["secretKey"]) as client:
        yield client


def _report_line(stdout: str, reference: str) -> str:
    lines = [line for line in stdout.splitlines() if reference in line]
    assert len(lines) == 1, stdout
    return lines[0]


async def test_reconcile_reports_each_kind_and_exits_2(sweep: Sweep, planted: Planted) -> None:
    assert sweep.exit_code == 2, (sweep.stdout, sweep.stderr)
    assert sweep.run_id, sweep.stdout
    assert re.search(
        r"checked \d+ transactions and \d+ ledger entries; \d+ in flight; "
        r"\d+ discrepancies",
        sweep.stdout,
    )
    assert "KIND" in sweep.stdout and "NETWORK" in sweep.stdout
    assert "KIND" in sweep.stdout and "ITEM" in sweep.stdout
    network_only = _report_line(sweep.stdout, planted.network_only)
    assert network_only.split()[0].startswith("rcd_")
    assert network_only.split()[1] in ("new", "open")  # "open": a scheduled sweep came first
    assert network_only.split()[2:4] == [
        "charged_at_network_not_succeeded_here",
        planted.network_only,
    ]
    assert "absent" in network_only and "approved 777 usd" in network_only
    ours_only = _report_line(sweep.stdout, planted.ours_only)
    assert ours_only.split()[2:5] == [
        "succeeded_here_not_at_network",
        planted.ours_only,
        planted.ours_only_intent,
    ]
    assert "succeeded 1500 usd" in ours_only and ours_only.endswith("absent")
    mismatch = _report_line(sweep.stdout, planted.mismatch)
    assert mismatch.split()[2] == "amount_mismatch"
    assert "succeeded 1000 usd" in mismatch and "approved 999 usd" in mismatch


async def test_reconcile_records_the_report_rows(
    sweep: Sweep, planted: Planted, db: asyncpg.Pool
) -> None:
    run = await db.fetchrow("SELECT * FROM reconciliation_run WHERE id = $1", sweep.run_id)
    assert run is not None
    assert run["trigger"] == "manual"
    assert run["window_end"] - run["window_start"] == timedelta(seconds=900)
    assert run["discrepancies"] >= 3
    assert run["discrepancies"] == run["newly_opened"] + run["still_open"]
    assert run["transactions_checked"] >= 2  # the network-only reference has no row of ours
    opened_here = await db.fetchval(
        "SELECT count(*) FROM reconciliation_discrepancy WHERE run_id = $1", sweep.run_id
    )
    assert opened_here == run["newly_opened"]
    rows = await _open_items(db, planted.network_only, planted.ours_only, planted.mismatch)
    assert all(r["resolved_at"] is None and r["detail"] == "{}" for r in rows.values())
    network_only = rows[planted.network_only]
    assert (
        network_only["kind"],
        network_only["merchant_id"],
        network_only["our_status"],
        network_only["network_status"],
        network_only["network_amount_in_cents"],
    ) == ("charged_at_network_not_succeeded_here", None, None, "approved", 777)
    ours_only = rows[planted.ours_only]
    assert (
        ours_only["kind"],
        ours_only["payment_intent_id"],
        ours_only["transaction_id"],
        ours_only["our_amount_in_cents"],
        ours_only["network_status"],
    ) == ("succeeded_here_not_at_network", planted.ours_only_intent, planted.ours_only, 1500, None)
    mismatch = rows[planted.mismatch]
    assert (
        mismatch["kind"],
        mismatch["our_amount_in_cents"],
        mismatch["network_amount_in_cents"],
    ) == ("amount_mismatch", 1000, 999)


async def _open_items(db: asyncpg.Pool, *references: str) -> dict[str, asyncpg.Record]:
    rows = await db.fetch(
        "SELECT * FROM reconciliation_discrepancy WHERE resolved_at IS NULL "
        "AND network_reference = ANY($1::text[])",
        list(references),
    )
    by_reference = {r["network_reference"]: r for r in rows}
    assert len(by_reference) == len(rows) == len(references), rows
    return by_reference


async def test_reconcile_appends_operator_events(
    sweep: Sweep, planted: Planted, merchant: dict[str, Any], db: asyncpg.Pool
) -> None:
    events = await _events_by_reference(
        db, planted.network_only, planted.ours_only, planted.mismatch
    )
    item = (await _open_items(db, planted.ours_only))[planted.ours_only]
    network_only = events[planted.network_only]
    assert network_only["merchant_id"] is None  # nobody to attribute it to
    assert network_only["data"]["kind"] == "charged_at_network_not_succeeded_here"
    ours_only = events[planted.ours_only]
    assert (
        ours_only["merchant_id"],
        ours_only["payment_intent_id"],
        ours_only["transaction_id"],
    ) == (merchant["id"], planted.ours_only_intent, planted.ours_only)
    assert ours_only["data"] == {
        "discrepancyId": item["id"],
        "runId": item["run_id"],
        "kind": "succeeded_here_not_at_network",
        "networkReference": planted.ours_only,
        "merchantId": merchant["id"],
        "paymentIntentId": planted.ours_only_intent,
        "transactionId": planted.ours_only,
        "ourStatus": "succeeded",
        "networkStatus": None,
        "ourAmountInCents": 1500,
        "networkAmountInCents": None,
        "currency": "usd",
        "networkCurrency": None,
        "detail": {},
    }
    assert item["run_id"].startswith("recon_")
    assert events[planted.mismatch]["data"]["networkAmountInCents"] == 999


async def _events_by_reference(db: asyncpg.Pool, *references: str) -> dict[str, dict[str, Any]]:
    """The one `reconciliation.discrepancy` event of each reference (fails if there are more)."""
    rows = await db.fetch(
        "SELECT merchant_id, payment_intent_id, transaction_id, data FROM event "
        "WHERE type = 'reconciliation.discrepancy' "
        "AND data->>'networkReference' = ANY($1::text[])",
        list(references),
    )
    decoded = [{**dict(r), "data": json.loads(r["data"])} for r in rows]
    by_reference = {e["data"]["networkReference"]: e for e in decoded}
    assert len(by_reference) == len(decoded), decoded
    return by_reference


async def test_merchants_never_see_operator_events(
    sweep: Sweep, planted: Planted, durapay: DurapayClient
) -> None:
    listed = (await durapay.get("/events?limit=100")).json()["data"]
    assert listed and all(e["type"].startswith("payment.") for e in listed)
    by_type = (await durapay.get("/events?type=reconciliation.discrepancy")).json()
    assert by_type["data"] == []
    trail = (await durapay.get(f"/payment-intents/{planted.ours_only_intent}/events")).json()
    assert [e["type"] for e in trail["data"]] == ["payment.created"]


async def test_reconcile_logs_each_discrepancy_in_the_worker(
    sweep: Sweep, planted: Planted, stack: RunningStack
) -> None:
    async def logged() -> bool:
        return all(
            _warnings(stack, kind, reference)
            for kind, reference in [
                ("charged_at_network_not_succeeded_here", planted.network_only),
                ("succeeded_here_not_at_network", planted.ours_only),
                ("amount_mismatch", planted.mismatch),
            ]
        )

    await assert_eventually(logged, timeout=10, message="discrepancy log lines in worker logs")
    assert "4242424242424242" not in stack.logs()


def _warnings(stack: RunningStack, kind: str, reference: str) -> list[str]:
    """The worker's WARNING lines (JSON objects, core/logs.py) reporting this discrepancy."""
    pattern = re.compile(
        rf"reconciliation discrepancy {kind} reference={reference} "
        rf".*run=recon_\w+ id=rcd_\w+"
    )
    found = []
    for text in stack.logs().splitlines():
        if not text.startswith("{"):
            continue  # Postgres's and Temporal's own lines
        try:
            line = json.loads(text)
        except ValueError:
            continue  # a line still being written
        if (line.get("level"), line.get("logger")) == (
            "WARNING",
            "durapay.reconciliation",
        ) and pattern.search(line.get("message", "")):
            found.append(line["message"])
    return found


async def test_second_sweep_reports_the_same_problems_as_still_open(
    sweep: Sweep, planted: Planted, stack: RunningStack, db: asyncpg.Pool
) -> None:
    before = await _open_items(db, planted.network_only, planted.ours_only, planted.mismatch)
    again = await _run_reconcile(stack, "--window-seconds", "900")
    assert again.exit_code == 2, (again.stdout, again.stderr)
    for reference, item in before.items():
        assert _report_line(again.stdout, reference).split()[:2] == [item["id"], "open"]
    run = await db.fetchrow("SELECT * FROM reconciliation_run WHERE id = $1", again.run_id)
    assert run is not None and run["still_open"] >= 3
    assert run["discrepancies"] == run["newly_opened"] + run["still_open"]
    # Still one item, one operator event and one WARNING line per problem.
    after = await _open_items(db, *before)
    assert {ref: r["id"] for ref, r in after.items()} == {ref: r["id"] for ref, r in before.items()}
    assert {r["last_seen_run_id"] for r in after.values()} == {again.run_id}
    total = await db.fetchval(
        "SELECT count(*) FROM reconciliation_discrepancy WHERE network_reference = ANY($1::text[])",
        list(before),
    )
    assert total == 3
    assert len(await _events_by_reference(db, *before)) == 3
    assert len(_warnings(stack, "amount_mismatch", planted.mismatch)) == 1
    assert len(_warnings(stack, "succeeded_here_not_at_network", planted.ours_only)) == 1


async def test_stuck_pending_row_is_reported_whatever_the_window_then_cleared(
    stack: RunningStack, durapay: DurapayClient, merchant: dict[str, Any], db: asyncpg.Pool
) -> None:
    intent = await create_intent(durapay, amount=700)
    reference = f"txn_recon_stuck_{uuid.uuid4().hex[:12]}"
    # Two hours old (the stuck age is 3600 s), far outside the one-minute window swept below.
    await db.execute(
        'INSERT INTO "transaction" (id, merchant_id, payment_intent_id, type, amount_in_cents, '
        "currency, status, network_reference, created_at) "
        "VALUES ($1, $2, $3, 'charge', 700, 'usd', 'pending', $1, now() - interval '2 hours')",
        reference,
        merchant["id"],
        intent["id"],
    )
    found = await _run_reconcile(stack, "--window-seconds", "60")
    assert found.exit_code == 2, (found.stdout, found.stderr)
    line = _report_line(found.stdout, reference)
    assert line.split()[1:5] == ["new", "stuck_unsettled", reference, intent["id"]]
    assert "pending 700 usd" in line
    item = (await _open_items(db, reference))[reference]
    assert (item["kind"], json.loads(item["detail"])) == (
        "stuck_unsettled",
        {"stuckAfterSeconds": 3600},
    )

    # Reconciliation settles the row: the next sweep checks the open item again and clears it.
    await db.execute("UPDATE \"transaction\" SET status = 'failed' WHERE id = $1", reference)
    cleared = await _run_reconcile(stack, "--window-seconds", "60")
    assert cleared.exit_code in (0, 2), (cleared.stdout, cleared.stderr)
    assert reference not in cleared.stdout
    row = await db.fetchrow("SELECT * FROM reconciliation_discrepancy WHERE id = $1", item["id"])
    assert row["resolved_at"] is not None
    assert row["resolution_note"] == f"cleared by sweep {cleared.run_id}"
    run = await db.fetchrow("SELECT cleared FROM reconciliation_run WHERE id = $1", cleared.run_id)
    assert run["cleared"] >= 1


async def test_resolved_item_stays_resolved_and_a_recurrence_opens_a_new_one(
    sweep: Sweep, planted: Planted, stack: RunningStack, db: asyncpg.Pool
) -> None:
    settings = Settings(DATABASE_URL=stack.database_url)
    item = (await _open_items(db, planted.network_only))[planted.network_only]
    listed = io.StringIO()
    assert await reconcile_cli.run_items(_cli("list"), settings, listed) == 2
    assert item["id"] in listed.getvalue()

    note = "refunded at the network by hand"
    resolved = io.StringIO()
    assert (
        await reconcile_cli.run_items(
            _cli("resolve", item["id"], "--note", note), settings, resolved
        )
        == 0
    )
    assert item["id"] in resolved.getvalue()
    row = await db.fetchrow("SELECT * FROM reconciliation_discrepancy WHERE id = $1", item["id"])
    assert row["resolved_at"] is not None and row["resolution_note"] == note
    assert await reconcile_cli.resolve(settings, item["id"], "again", io.StringIO()) == 1
    assert await reconcile_cli.resolve(settings, "rcd_nonexistent", "x", io.StringIO()) == 1
    relisted = io.StringIO()
    await reconcile_cli.list_discrepancies(settings, relisted)
    assert item["id"] not in relisted.getvalue()
    # Evidence: a resolved item never changes again, and no item is ever deleted.
    with pytest.raises(asyncpg.RaiseError):
        await db.execute(
            "UPDATE reconciliation_discrepancy SET resolution_note = 'x' WHERE id = $1", item["id"]
        )
    with pytest.raises(asyncpg.RaiseError):
        await db.execute("DELETE FROM reconciliation_discrepancy WHERE id = $1", item["id"])

    # The network still shows the charge: the next sweep opens a new item, with a new alarm.
    again = await _run_reconcile(stack, "--window-seconds", "900")
    line = _report_line(again.stdout, planted.network_only)
    reopened = (await _open_items(db, planted.network_only))[planted.network_only]
    assert reopened["id"] != item["id"]
    assert line.split()[:3] == [reopened["id"], "new", "charged_at_network_not_succeeded_here"]
    events = await db.fetchval(
        "SELECT count(*) FROM event WHERE type = 'reconciliation.discrepancy' "
        "AND data->>'networkReference' = $1",
        planted.network_only,
    )
    assert events == 2


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="durapay")
    reconcile_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["reconcile", *argv])


async def test_normal_charge_is_checked_and_not_reported(
    stack: RunningStack, durapay: DurapayClient, db: asyncpg.Pool
) -> None:
    intent = await create_intent(durapay)
    charged = await charge(durapay, intent["id"], CARD_4242)
    assert charged.status_code == 200, charged.text
    reference = charged.json()["networkReference"]
    result = await _run_reconcile(stack, "--window-seconds", "300")
    assert result.exit_code in (0, 2), (result.stdout, result.stderr)
    assert result.run_id, result.stdout
    assert reference not in result.stdout and intent["id"] not in result.stdout
    reported = await db.fetchval(
        "SELECT count(*) FROM reconciliation_discrepancy WHERE network_reference = $1", reference
    )
    assert reported == 0
    run = await db.fetchrow("SELECT * FROM reconciliation_run WHERE id = $1", result.run_id)
    assert run is not None and run["transactions_checked"] >= 1


async def test_clean_window_exits_0(stack: RunningStack, sweep: Sweep) -> None:
    # A one-second window right now: nothing of ours can be in it unless another test charges
    # this very second, so retry a few times rather than assert on a shared ledger.
    async def clean() -> Sweep | None:
        result = await _run_reconcile(stack, "--window-seconds", "1")
        return result if result.exit_code == 0 else None

    result = await assert_eventually(clean, timeout=60, interval=0.5)
    assert "no discrepancies" in result.stdout
    assert result.run_id and result.run_id != sweep.run_id


async def test_reconcile_without_temporal_exits_1(stack: RunningStack, tmp_path: Path) -> None:
    env = {**stack.env, "DURAPAY_HOME": str(tmp_path), "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    process = await asyncio.create_subprocess_exec(
        str(DURAPAY),
        "reconcile",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    assert b"cannot reach Temporal" in stderr


async def test_worker_creates_the_sweep_schedule(temporal: Client) -> None:
    described = await temporal.get_schedule_handle(RECONCILIATION_SCHEDULE_ID).describe()
    schedule = described.schedule
    assert [i.every for i in schedule.spec.intervals] == [timedelta(seconds=900)]
    assert schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    assert schedule.action.workflow == "ReconciliationSweepWorkflow"
    assert schedule.action.task_queue == "durapay-payments"


async def test_schedule_follows_the_interval_and_keeps_a_pause(temporal: Client) -> None:
    handle = temporal.get_schedule_handle(RECONCILIATION_SCHEDULE_ID)
    configured = Settings(
        task_queue="durapay-payments",
        reconcile_sweep_interval_seconds=900,
        reconcile_sweep_window_seconds=172_800,
    )
    changed = configured.model_copy(update={"reconcile_sweep_interval_seconds": 3600})
    await handle.pause(note="paused by test")
    try:
        # Three workers starting together with the new setting: one update, no error.
        await asyncio.gather(*(ensure_reconciliation_schedule(temporal, changed) for _ in range(3)))
        await assert_eventually(
            lambda: _schedule_is(handle, timedelta(hours=1), paused=True), timeout=15
        )
    finally:
        await ensure_reconciliation_schedule(temporal, configured)
        # The update carries the state it was made with (paused, to keep an operator's pause).
        # Sent back to back, the scheduler applied the unpause first and the update after it,
        # paused for good (seen 1 run in 4-8): unpause only once the update shows.
        await assert_eventually(
            lambda: _schedule_is(handle, timedelta(seconds=900), paused=True), timeout=15
        )
        await handle.unpause()
    await assert_eventually(
        lambda: _schedule_is(handle, timedelta(seconds=900), paused=False), timeout=15
    )


async def _schedule_is(handle: ScheduleHandle, every: timedelta, *, paused: bool) -> bool:
    """Updates and pauses reach a schedule as signals to its scheduler, applied after the call
    returns: what they did shows in a describe only once the scheduler took them."""
    described = await handle.describe()
    assert [i.every for i in described.schedule.spec.intervals] == [every]
    assert described.schedule.state.paused is paused, described.schedule.state
    return True


async def test_triggered_schedule_runs_a_recorded_sweep(temporal: Client, db: asyncpg.Pool) -> None:
    started = time.time()
    await temporal.get_schedule_handle(RECONCILIATION_SCHEDULE_ID).trigger()

    async def finished_run() -> Any:
        async for execution in temporal.list_workflows(
            f"WorkflowType = 'ReconciliationSweepWorkflow' "
            f"AND TemporalScheduledById = '{RECONCILIATION_SCHEDULE_ID}'"
        ):
            if (
                execution.status is WorkflowExecutionStatus.COMPLETED
                and execution.start_time.timestamp() >= started - 1
            ):
                return execution
        return None

    execution = await assert_eventually(finished_run, timeout=60, interval=0.5)
    result = await temporal.get_workflow_handle(
        execution.id, run_id=execution.run_id, result_type=ReconciliationSweepResult
    ).result()
    run = await db.fetchrow("SELECT trigger FROM reconciliation_run WHERE id = $1", result.run_id)
    assert run is not None and run["trigger"] == "schedule"


async def test_retried_sweep_activity_returns_the_stored_report(
    stack: RunningStack,
    cardnet: httpx.AsyncClient,
    db: asyncpg.Pool,
    durapay: DurapayClient,
    merchant: dict[str, Any],
) -> None:
    reference = f"ext_recon_retry_{uuid.uuid4().hex[:12]}"
    await _network_charge(cardnet, reference, 321)
    end = datetime.now(UTC)
    request = ReconcileWindowInput(
        f"recon_test_{uuid.uuid4().hex[:12]}", end - timedelta(seconds=60), end, "manual"
    )
    engine = create_engine(to_asyncpg_url(stack.database_url), pool_size=2)
    try:
        async with httpx.AsyncClient() as http:
            sweeper = ReconciliationActivities(
                sessions=session_factory(engine), http=http, cardnet_url=stack.cardnet_url
            )
            first = await sweeper.reconcile_window(request)
            # The world moves on between attempts: a new row of ours lands inside the window.
            intent = await create_intent(durapay, amount=1200)
            late = f"txn_recon_late_{uuid.uuid4().hex[:12]}"
            await _insert_succeeded_transaction(db, intent, merchant["id"], late, 1200)
            await db.execute(
                'UPDATE "transaction" SET created_at = $2 WHERE id = $1',
                late,
                end - timedelta(seconds=1),
            )
            second = await sweeper.reconcile_window(request)
    finally:
        await engine.dispose()
    assert reference in {d.network_reference for d in first.discrepancies}
    assert second == first
    events = await db.fetchval(
        "SELECT count(*) FROM event WHERE type = 'reconciliation.discrepancy' "
        "AND data->>'runId' = $1",
        request.run_id,
    )
    assert events == first.counts.newly_opened


@pytest.fixture
async def scratch_url(stack: RunningStack) -> AsyncIterator[str]:
    name = f"recon_migration_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield stack.database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


BEFORE_OPEN_ITEMS = "2026_11_25_payment_lifecycle"


async def test_migration_keeps_the_first_report_of_each_problem_open(scratch_url: str) -> None:
    url = to_asyncpg_url(scratch_url)
    await asyncio.to_thread(upgrade, url, BEFORE_OPEN_ITEMS)
    first, later = datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    connection = await asyncpg.connect(scratch_url)
    try:
        # Two sweeps of the old kind: the second reported ext_a again, as a row of its own.
        for run_id, at, found in (("recon_1", first, 2), ("recon_2", later, 1)):
            await connection.execute(
                "INSERT INTO reconciliation_run (id, window_start, window_end, trigger, "
                "transactions_checked, ledger_entries_checked, in_flight, discrepancies, "
                "created_at) VALUES ($1, $2, $2, 'schedule', 0, 0, 0, $3, $2)",
                run_id,
                at,
                found,
            )
        for row_id, run_id, reference, kind, at in (
            ("rcd_1", "recon_1", "ext_a", "charged_at_network_not_succeeded_here", first),
            ("rcd_2", "recon_1", "txn_b", "amount_mismatch", first),
            ("rcd_3", "recon_2", "ext_a", "charged_at_network_not_succeeded_here", later),
        ):
            await connection.execute(
                "INSERT INTO reconciliation_discrepancy (id, run_id, kind, network_reference, "
                "created_at) VALUES ($1, $2, $3, $4, $5)",
                row_id,
                run_id,
                kind,
                reference,
                at,
            )

        await asyncio.to_thread(upgrade, url)
        rows = {
            r["id"]: r for r in await connection.fetch("SELECT * FROM reconciliation_discrepancy")
        }
        assert (
            rows["rcd_1"]["resolved_at"],
            rows["rcd_1"]["last_seen_run_id"],
            rows["rcd_1"]["last_seen_at"],
        ) == (None, "recon_2", later)
        assert (rows["rcd_2"]["resolved_at"], rows["rcd_2"]["last_seen_run_id"]) == (
            None,
            "recon_1",
        )
        assert rows["rcd_3"]["resolved_at"] == later
        assert rows["rcd_3"]["resolution_note"].startswith("duplicate of rcd_1")
        runs = {
            r["id"]: tuple(r)
            for r in await connection.fetch(
                "SELECT id, newly_opened, still_open, cleared FROM reconciliation_run"
            )
        }
        assert runs == {"recon_1": ("recon_1", 2, 0, 0), "recon_2": ("recon_2", 0, 1, 0)}

        await asyncio.to_thread(downgrade, url, BEFORE_OPEN_ITEMS)
        assert await connection.fetchval("SELECT count(*) FROM reconciliation_discrepancy") == 3
        with pytest.raises(asyncpg.RaiseError):  # append-only again
            await connection.execute("DELETE FROM reconciliation_discrepancy")
        await asyncio.to_thread(upgrade, url)
    finally:
        await connection.close()
