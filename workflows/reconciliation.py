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
    from core.reconciliation import (
        DEFAULT_STUCK_AFTER_SECONDS,
        Discrepancy,
        ReconciliationCounts,
        SweepTrigger,
    )

# A sweep that cannot reach the ledger or the database gives up after ~2 minutes: the schedule
# runs the next one anyway, and an operator waiting on `durapay reconcile` learns it failed.
SWEEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
)
INVALID_SWEEP_INPUT = "InvalidSweepInput"


@dataclass
class ReconciliationSweepInput:
    window_seconds: int
    trigger: SweepTrigger = SweepTrigger.SCHEDULE
    # Pending/timeout rows older than this are stuck; found whatever the window.
    stuck_after_seconds: int = DEFAULT_STUCK_AFTER_SECONDS


@dataclass
class ReconciliationSweepResult:
    run_id: str
    trigger: SweepTrigger
    window_start: datetime
    window_end: datetime
    counts: ReconciliationCounts
    # At most MAX_REPORTED_DISCREPANCIES rows (newly opened and still open items); the counts
    # have the full numbers and `reconciliation_discrepancy` holds every item.
    discrepancies: list[Discrepancy] = field(default_factory=list)


@workflow.defn
class ReconciliationSweepWorkflow:
    """A reconciliation sweep: take the window that ends now, let one activity compare our
    transactions (and every stuck one) with the network's ledger, open an item per new
    problem (event and log line once), clear the ones gone, and return what it found. The
    schedule starts one every interval; `durapay reconcile` starts one on demand. Charges
    still being reconciled by their own workflow are counted as in flight, not reported.
    """

    @workflow.run
    async def run(self, input: ReconciliationSweepInput) -> ReconciliationSweepResult:
        _require_positive("window_seconds", input.window_seconds)
        _require_positive("stuck_after_seconds", input.stuck_after_seconds)
        window_end = workflow.now()
        window_start = window_end - timedelta(seconds=input.window_seconds)
        report = await workflow.execute_activity_method(
            ReconciliationActivities.reconcile_window,
            ReconcileWindowInput(
                self._run_id(),
                window_start,
                window_end,
                input.trigger.value,
                input.stuck_after_seconds,
            ),
            # Reads a window of our rows and the whole simulated ledger, then one DB transaction.
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=SWEEP_RETRY,
        )
        if report.counts.newly_opened:  # a problem already open raised its alarm once
            workflow.logger.warning(
                "reconciliation run %s opened %d discrepancies (%d still open)",
                report.run_id,
                report.counts.newly_opened,
                report.counts.still_open,
            )
        return ReconciliationSweepResult(
            report.run_id,
            input.trigger,
            window_start,
            window_end,
            report.counts,
            report.discrepancies,
        )

    def _run_id(self) -> str:
        # Same workflow run, same report id: a retried activity finds its report, never a twin.
        info = workflow.info()
        digest = hashlib.sha256(f"{info.workflow_id}:{info.run_id}".encode()).hexdigest()
        return f"recon_{digest[:24]}"


def _require_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ApplicationError(
            f"{name} must be positive, got {value}", type=INVALID_SWEEP_INPUT, non_retryable=True
        )
