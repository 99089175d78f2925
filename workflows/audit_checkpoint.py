"""AuditCheckpointWorkflow: record where every audit hash chain that moved now ends, so that
events deleted from a chain's end later, or a whole chain, are missing from a chain known to
reach further."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.audit import AuditActivities

# The schedule runs the next checkpoint anyway: one that cannot reach the database gives up.
CHECKPOINT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
)


@workflow.defn
class AuditCheckpointWorkflow:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity_method(
            AuditActivities.record_chain_checkpoints,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=CHECKPOINT_RETRY,
        )
