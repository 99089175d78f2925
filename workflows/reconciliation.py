"""ReconciliationSweepWorkflow: compare our books with the card network's, one window at a time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.reconciliation import ReconcileWindowInput, ReconciliationActivities
    from core.reconciliation import Discrepancy, ReconciliationCounts, SweepTrigger

# A sweep that cannot reach the ledger or the database gives up after ~2 minutes: the schedule
# runs the next one anyway, and an operator waiting on `durapay reconcile` learns it failed.
SWEEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                          maximum_interval=timedelta(seconds=30), maximum_attempts=6)
INVALID_SWEEP_INPUT = "InvalidSweepInput"


@dataclass
class ReconciliationSweepInput:
    window_seconds: int
    trigger: SweepTrigger = SweepTrigger.SCHEDULE


@dataclass
class ReconciliationSweepResult:
    run_id: str
    trigger: SweepTrigger
    window_start: datetime
    window_end: datetime
    counts: ReconciliationCounts
    # At most MAX_REPORTED_DISCREPANCIES rows; `counts.discrepancies` is the full number and
    # `reconciliation_discrepancy` holds every one of them.
    discrepancies: list[Discrepancy] = field(default_factory=list)


@workflow.defn
class ReconciliationSweepWorkflow:
    """A reconciliation sweep: take the window that ends now, let one activity compare our
    transactions with the network's ledger and record the report (rows, events, log lines),
    and return what it found. The schedule starts one every interval; `durapay reconcile`
    starts one on demand. Charges still being reconciled by their own workflow are counted
    as in flight, not reported.
    """

    @workflow.run
    async def run(self, input: ReconciliationSweepInput) -> ReconciliationSweepResult:
        if input.window_seconds <= 0:
            raise ApplicationError(f"window_seconds must be positive, got {input.window_seconds}",
                                   type=INVALID_SWEEP_INPUT, non_retryable=True)
        window_end = workflow.now()
        window_start = window_end - timedelta(seconds=input.window_seconds)
        report = await workflow.execute_activity_method(
            ReconciliationActivities.reconcile_window,
            ReconcileWindowInput(self._run_id(), window_start, window_end, input.trigger.value),
            # Reads a window of our rows and the whole simulated ledger, then one DB transaction.
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=SWEEP_RETRY)
        if report.counts.discrepancies:
            workflow.logger.warning("reconciliation run %s found %d discrepancies",
                                    report.run_id, report.counts.discrepancies)
        return ReconciliationSweepResult(report.run_id, input.trigger, window_start, window_end,
                                         report.counts, report.discrepancies)

    def _run_id(self) -> str:
        # Same workflow run, same report id: a retried activity finds its report, never a twin.
        info = workflow.info()
        digest = hashlib.sha256(f"{info.workflow_id}:{info.run_id}".encode()).hexdigest()
        return f"recon_{digest[:24]}"
