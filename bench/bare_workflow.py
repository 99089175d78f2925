"""The bench's baseline workflow: what Temporal alone costs for a workflow that runs two
activities one after the other, with no database, no network call and no Durapay code.

It lives in an importable module (not `__main__`) because the workflow sandbox re-imports the
module that defines a workflow class.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

# The same timeout shape as a real activity; a no-op never comes near it.
ACTIVITY_TIMEOUT = timedelta(seconds=30)


@activity.defn
async def noop() -> None:
    """Does nothing: the measured cost is scheduling, dispatch and completion."""


@workflow.defn
class BareWorkflow:
    @workflow.run
    async def run(self) -> None:
        # Two sequential activities: two round trips through the activity task queue, as a
        # charge makes at least a record and a network call.
        for _ in range(2):
            await workflow.execute_activity(noop, start_to_close_timeout=ACTIVITY_TIMEOUT)
