"""Held operations: decisions committed later by background tasks, not by the request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cardnet.cards import SLOW_STATUS_PENDING_QUERIES
from cardnet.ledger import Ledger
from cardnet.models import OperationType
from cardnet.records import Committed, Hold, HoldKind, Operation

logger = logging.getLogger(__name__)


class HoldManager:
    """Schedules the commit of timer holds and wakes requests waiting on a reference.

    Commits run in their own asyncio tasks, never in the request's task, so a caller that
    times out and disconnects (which may cancel its request task) cannot stop the network
    from committing — exactly like a real network that finished the work anyway.
    Must be used from a single event loop.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._events: dict[str, asyncio.Event] = {}
        # Strong references: the event loop only keeps weak ones to running tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    def resume(self) -> None:
        """Reschedule holds persisted by a previous process (overdue ones commit at once)."""
        for hold in self._ledger.holds():
            if hold.kind == HoldKind.TIMER:
                logger.info("resuming hold on %s", hold.op.reference)
                self._schedule(hold)

    def start(self, hold: Hold) -> None:
        # Persist first: if the process dies during the hold, resume() finishes it.
        self._ledger.add_hold(hold)
        if hold.kind == HoldKind.TIMER:
            self._schedule(hold)

    async def wait(self, reference: str, timeout: float) -> Committed | None:
        """Wait up to timeout seconds for the reference to be committed."""
        entry = self._ledger.committed(reference)
        if entry is not None:
            return entry
        event = self._events.setdefault(reference, asyncio.Event())
        # shield: cancelling this waiter must not cancel the shared wait of other requests.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(event.wait()), timeout)
        return self._ledger.committed(reference)

    def poll(self, reference: str) -> Committed | Hold | None:
        """Answer a status query, letting a polls-hold commit when it has been asked enough."""
        state, just_committed = self._ledger.poll(reference, SLOW_STATUS_PENDING_QUERIES)
        if just_committed:
            self._notify(reference)
        return state

    async def close(self) -> None:
        """Stop pending timers; their holds stay persisted and resume on the next start."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _schedule(self, hold: Hold) -> None:
        task = asyncio.get_running_loop().create_task(
            self._commit_when_due(hold), name=f"cardnet-hold-{hold.op.reference}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit_when_due(self, hold: Hold) -> None:
        await asyncio.sleep(max(0.0, hold.due_at - time.time()))
        try:
            self._ledger.commit(hold.op, hold.decision)
        except Exception:
            # Keep the hold row: the next start retries it. Waiters time out to `pending`.
            logger.exception("failed to commit held operation %s", hold.op.reference)
            return
        self.committed(hold.op)

    def committed(self, op: Operation) -> None:
        """Wake the requests waiting on an operation just committed, and for a reversal those
        waiting on the original it stopped while held."""
        self._notify(op.reference)
        if op.type == OperationType.REVERSAL and op.parent_reference:
            self._notify(op.parent_reference)

    def _notify(self, reference: str) -> None:
        event = self._events.pop(reference, None)
        if event is not None:
            event.set()
