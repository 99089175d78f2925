"""ReconciliationSweepWorkflow on the time-skipping server, with the sweep activity mocked."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.reconciliation import ReconcileWindowInput, ReconciliationReport
from core.reconciliation import (
    DEFAULT_STUCK_AFTER_SECONDS,
    Discrepancy,
    DiscrepancyKind,
    ReconciliationCounts,
    SweepTrigger,
)
from tests.workflows.conftest import new_worker
from workflows.reconciliation import (
    INVALID_SWEEP_INPUT,
    ReconciliationSweepInput,
    ReconciliationSweepResult,
    ReconciliationSweepWorkflow,
)

FOUND = Discrepancy(
    kind=DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE.value,
    network_reference="ext_1",
    network_status="approved",
    network_amount_in_cents=500,
    currency="usd",
    network_currency="usd",
)


@dataclass
class FakeSweep:
    """Answers `reconcile_window` like the real activity and records every attempt."""

    failures: list[Exception] = field(default_factory=list)
    calls: list[ReconcileWindowInput] = field(default_factory=list)

    def activities(self) -> list[Callable[..., Any]]:
        @activity.defn(name="reconcile_window")
        async def reconcile_window(request: ReconcileWindowInput) -> ReconciliationReport:
            self.calls.append(request)
            if self.failures:
                raise self.failures.pop(0)
            counts = ReconciliationCounts(
                transactions_checked=3,
                ledger_entries_checked=4,
                in_flight=1,
                discrepancies=1,
                newly_opened=1,
            )
            return ReconciliationReport(request.run_id, counts, [FOUND])

        return [reconcile_window]


async def _sweep(
    env: WorkflowEnvironment, fake: FakeSweep, sweep: ReconciliationSweepInput
) -> ReconciliationSweepResult:
    async with new_worker(
        env.client, ReconciliationSweepWorkflow, activities=fake.activities()
    ) as worker:
        return await env.client.execute_workflow(
            ReconciliationSweepWorkflow.run,
            sweep,
            id=f"recon-{uuid.uuid4()}",
            task_queue=worker.task_queue,
        )


async def test_sweep_covers_the_window_that_ends_now(env: WorkflowEnvironment) -> None:
    fake = FakeSweep()
    before = await env.get_current_time()
    result = await _sweep(env, fake, ReconciliationSweepInput(3600, SweepTrigger.MANUAL))

    [call] = fake.calls
    assert call.trigger == "manual"
    assert call.window_end - call.window_start == timedelta(hours=1)
    assert call.window_end >= before - timedelta(seconds=1)
    assert call.run_id.startswith("recon_")
    assert (result.run_id, result.window_start, result.window_end) == (
        call.run_id,
        call.window_start,
        call.window_end,
    )
    assert result.trigger is SweepTrigger.MANUAL
    assert result.counts == ReconciliationCounts(3, 4, 1, 1, newly_opened=1)
    assert result.discrepancies == [FOUND]
    assert call.stuck_after_seconds == DEFAULT_STUCK_AFTER_SECONDS


async def test_sweep_passes_the_stuck_age_to_the_activity(env: WorkflowEnvironment) -> None:
    fake = FakeSweep()
    await _sweep(env, fake, ReconciliationSweepInput(60, SweepTrigger.MANUAL, 7200))
    assert [c.stuck_after_seconds for c in fake.calls] == [7200]


async def test_scheduled_sweep_is_the_default_trigger(env: WorkflowEnvironment) -> None:
    fake = FakeSweep()
    await _sweep(env, fake, ReconciliationSweepInput(60))
    assert [c.trigger for c in fake.calls] == ["schedule"]


async def test_retried_sweep_keeps_its_run_id(env: WorkflowEnvironment) -> None:
    # The run id is the report's idempotency key: a retry must find the first attempt's report.
    fake = FakeSweep(failures=[RuntimeError("ledger unreachable"), RuntimeError("db restart")])
    result = await _sweep(env, fake, ReconciliationSweepInput(60, SweepTrigger.MANUAL))
    assert len(fake.calls) == 3
    assert {c.run_id for c in fake.calls} == {result.run_id}
    assert len({(c.window_start, c.window_end) for c in fake.calls}) == 1


async def test_each_sweep_gets_its_own_run_id(env: WorkflowEnvironment) -> None:
    fake = FakeSweep()
    first = await _sweep(env, fake, ReconciliationSweepInput(60))
    second = await _sweep(env, fake, ReconciliationSweepInput(60))
    assert first.run_id != second.run_id


async def test_sweep_that_keeps_failing_fails_the_workflow(env: WorkflowEnvironment) -> None:
    fake = FakeSweep(failures=[RuntimeError("ledger unreachable")] * 10)
    with pytest.raises(WorkflowFailureError):
        await _sweep(env, fake, ReconciliationSweepInput(60))
    assert len(fake.calls) == 6  # SWEEP_RETRY's bound: the schedule tries again next interval


@pytest.mark.parametrize("window_seconds", [0, -5])
async def test_empty_window_is_refused(env: WorkflowEnvironment, window_seconds: int) -> None:
    fake = FakeSweep()
    with pytest.raises(WorkflowFailureError) as failure:
        await _sweep(env, fake, ReconciliationSweepInput(window_seconds))
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == INVALID_SWEEP_INPUT
    assert fake.calls == []


@pytest.mark.parametrize("stuck_after_seconds", [0, -1])
async def test_non_positive_stuck_age_is_refused(
    env: WorkflowEnvironment, stuck_after_seconds: int
) -> None:
    fake = FakeSweep()
    with pytest.raises(WorkflowFailureError) as failure:
        await _sweep(
            env, fake, ReconciliationSweepInput(60, SweepTrigger.SCHEDULE, stuck_after_seconds)
        )
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == INVALID_SWEEP_INPUT
    assert fake.calls == []
