"""HousekeepingWorkflow: delete what has expired, so that no merchant request has to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.types import MethodAsyncNoParam

with workflow.unsafe.imports_passed_through():
    from activities.housekeeping import HousekeepingActivities, Pruned

# The schedule runs the next one anyway: a run that cannot reach the database gives up.
HOUSEKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
)
# Each activity works at most a minute (activities/housekeeping.py); a batch is milliseconds,
# so a heartbeat a batch comes far more often than this.
START_TO_CLOSE = timedelta(minutes=3)
HEARTBEAT_TIMEOUT = timedelta(seconds=30)


@dataclass
class HousekeepingResult:
    nonces: Pruned
    idempotency_records: Pruned
    card_numbers: Pruned


@workflow.defn
class HousekeepingWorkflow:
    """Housekeeping: spent nonces past their signature window, Idempotency-Key records past
    retention and card numbers past theirs are deleted, each in bounded batches until none is
    left. The `durapay-housekeeping` schedule starts one every interval; requests never prune.
    """

    @workflow.run
    async def run(self) -> HousekeepingResult:
        nonces = await self._prune(HousekeepingActivities.delete_expired_nonces)
        records = await self._prune(HousekeepingActivities.delete_expired_idempotency_records)
        cards = await self._prune(HousekeepingActivities.shred_stale_card_numbers)
        return HousekeepingResult(nonces=nonces, idempotency_records=records, card_numbers=cards)

    async def _prune(self, prune: MethodAsyncNoParam[HousekeepingActivities, Pruned]) -> Pruned:
        return await workflow.execute_activity_method(
            prune,
            start_to_close_timeout=START_TO_CLOSE,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=HOUSEKEEPING_RETRY,
        )
