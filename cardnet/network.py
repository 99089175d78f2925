"""The card network's decision flow for one operation request."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cardnet.cards import FLAKY_FAILURES, Behaviour, CardPlan, brand_for, plan_for
from cardnet.faults import FaultInjector, FaultRoll
from cardnet.holds import HoldManager
from cardnet.ledger import Ledger
from cardnet.models import OperationIn
from cardnet.records import Committed, Decision, Hold, HoldKind, Operation
from cardnet.settings import Settings

logger = logging.getLogger(__name__)

# Extra wait beyond a timer hold's due time before a waiting request gives up as `pending`;
# only reached if the commit itself failed.
_TIMER_GRACE_SECONDS = 5.0


class Outcome(StrEnum):
    DECIDED = "decided"
    PENDING = "pending"
    UNAVAILABLE = "unavailable"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    entry: Committed | None = None
    hold: Hold | None = None
    # Commit happened, but the response must be lost on the wire.
    drop: bool = False


class CardNetwork:
    """Owns the ledger, the holds and the faults; opened and closed with the app."""

    def __init__(self, data_dir: Path, settings: Settings) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.faults = FaultInjector(settings.faults)
        self._ledger: Ledger | None = None
        self._holds: HoldManager | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("card network is not started")
        return self._ledger

    @property
    def holds(self) -> HoldManager:
        if self._holds is None:
            raise RuntimeError("card network is not started")
        return self._holds

    def start(self) -> None:
        self._ledger = Ledger(self.data_dir)
        self._holds = HoldManager(self._ledger)
        self._holds.resume()

    async def stop(self) -> None:
        if self._holds is not None:
            await self._holds.close()
        if self._ledger is not None:
            self._ledger.close()
        self._holds = self._ledger = None

    async def submit(self, body: OperationIn) -> Answer:
        roll = self.faults.roll()
        if roll.latency_seconds:
            await asyncio.sleep(roll.latency_seconds)
        # From here to the commit or the start of the hold there is no await: on the single
        # event loop the idempotency check and the write cannot interleave with a duplicate.
        plan = plan_for(body.card.number) if body.card else None
        brand = brand_for(body.card.number) if body.card else None
        op = Operation.from_request(body, brand)

        existing = self.ledger.committed(op.reference)
        if existing is not None:
            if existing.op.fingerprint != op.fingerprint:
                return Answer(Outcome.CONFLICT, entry=existing)
            # Idempotency wins over faults, except that the replay can be lost again.
            return Answer(Outcome.DECIDED, entry=existing, drop=roll.drop)

        held = self.ledger.hold(op.reference)
        if held is not None:
            if held.op.fingerprint != op.fingerprint:
                return Answer(Outcome.CONFLICT, hold=held)
            return await self._await_hold(held, drop=roll.drop)

        return await self._decide_fresh(op, plan, roll)

    def status(self, reference: str) -> Committed | Hold | None:
        return self.holds.poll(reference)

    async def _decide_fresh(self, op: Operation, plan: CardPlan | None, roll: FaultRoll) -> Answer:
        attempts = self.ledger.bump_attempts(op.reference)
        if roll.error:
            logger.info("fault: 503 for %s", op.reference)
            return Answer(Outcome.UNAVAILABLE)
        if plan is not None and plan.behaviour == Behaviour.PROCESSING_ERROR:
            return Answer(Outcome.UNAVAILABLE)
        if plan is not None and plan.behaviour == Behaviour.FLAKY and attempts <= FLAKY_FAILURES:
            return Answer(Outcome.UNAVAILABLE)

        decision: Decision | None = None  # None: capture/void/refund, decided by the rules
        if plan is not None:
            decision = (
                Decision.approve()
                if plan.approved
                else Decision.decline(plan.decline_code or "generic_decline")
            )

        # The lost-response card loses its first answer whether or not a fault held it.
        drop = roll.drop or (plan is not None and plan.behaviour == Behaviour.DROP)
        hold = self._hold_for(op, plan, roll, decision)
        if hold is not None:
            logger.info("holding %s (%s)", op.reference, hold.kind.value)
            self.holds.start(hold)
            return await self._await_hold(hold, drop=drop)

        return Answer(Outcome.DECIDED, entry=self.ledger.commit(op, decision), drop=drop)

    def _hold_for(
        self, op: Operation, plan: CardPlan | None, roll: FaultRoll, decision: Decision | None
    ) -> Hold | None:
        due_at = time.time() + self.settings.hold_seconds
        if plan is not None and plan.behaviour == Behaviour.SLOW_STATUS:
            return Hold(op, HoldKind.POLLS, due_at, Decision.approve())
        if roll.hold or (plan is not None and plan.behaviour == Behaviour.HOLD):
            return Hold(op, HoldKind.TIMER, due_at, decision)
        return None

    async def _await_hold(self, hold: Hold, drop: bool) -> Answer:
        """Keep the caller waiting for the same decision as the original request."""
        if hold.kind == HoldKind.TIMER:
            timeout = max(0.0, hold.due_at - time.time()) + _TIMER_GRACE_SECONDS
        else:
            # Nothing commits a polls-hold on a timer: each request waits one hold period.
            timeout = self.settings.hold_seconds
        entry = await self.holds.wait(hold.op.reference, timeout)
        if entry is None:
            return Answer(Outcome.PENDING, hold=self.ledger.hold(hold.op.reference) or hold)
        return Answer(Outcome.DECIDED, entry=entry, drop=drop)
