"""The card network's decision flow for one operation request."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cardnet.cards import FLAKY_FAILURES, Behaviour, CardPlan, brand_for, plan_for
from cardnet.faults import FaultInjector, FaultRoll, WireFault
from cardnet.holds import HoldManager
from cardnet.ledger import Ledger
from cardnet.models import OperationIn
from cardnet.records import Committed, Decision, Hold, HoldKind, Operation, epoch_seconds
from cardnet.settings import Settings

logger = logging.getLogger(__name__)

# Extra wait beyond a timer hold's due time before a waiting request gives up as `pending`;
# only reached if the commit itself failed.
_TIMER_GRACE_SECONDS = 5.0

# The bad-day cards spoil every answer to their reference, the first and every retry.
_CARD_WIRE_FAULTS = {
    Behaviour.GATEWAY_ERROR: WireFault.GATEWAY_ERROR,
    Behaviour.GARBAGE: WireFault.GARBAGE,
    Behaviour.TRICKLE: WireFault.TRICKLE,
}
# Cards held for the hold duration, then committed by a timer.
_TIMER_HOLD_BEHAVIOURS = frozenset({Behaviour.HOLD, Behaviour.LAGGING_STATUS})


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
    # A DECIDED answer that goes wrong on the way back (the commit has happened).
    wire_fault: WireFault | None = None


class CardNetwork:
    """Owns the ledger, the holds and the faults; opened and closed with the app."""

    def __init__(self, data_dir: Path, settings: Settings) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.faults = FaultInjector(settings.faults)
        self._ledger: Ledger | None = None
        self._holds: HoldManager | None = None
        # Requests delayed in transit (fault `transitDelayMs`); strong references for the loop.
        self._in_transit: set[asyncio.Task[Answer]] = set()

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
        # Requests still in transit are lost with the process, before the network saw them.
        in_transit = list(self._in_transit)
        for task in in_transit:
            task.cancel()
        await asyncio.gather(*in_transit, return_exceptions=True)
        if self._holds is not None:
            await self._holds.close()
        if self._ledger is not None:
            self._ledger.close()
        self._holds = self._ledger = None

    async def submit(self, body: OperationIn) -> Answer:
        roll = self.faults.roll()
        transit_seconds = self.faults.settings.transit_delay_ms / 1000
        if not transit_seconds:
            return await self._handle(body, roll)
        # Detached from the request: a caller that hangs up cannot recall a request that is
        # already on its way to the network (it arrives late, after the caller gave up).
        task = asyncio.get_running_loop().create_task(
            self._arrive_late(body, roll, transit_seconds),
            name=f"cardnet-transit-{body.reference}",
        )
        self._in_transit.add(task)
        task.add_done_callback(self._in_transit.discard)
        return await asyncio.shield(task)

    async def _arrive_late(self, body: OperationIn, roll: FaultRoll, seconds: float) -> Answer:
        await asyncio.sleep(seconds)
        logger.info("fault: %s arrives after %.1f s in transit", body.reference, seconds)
        return await self._handle(body, roll)

    async def _handle(self, body: OperationIn, roll: FaultRoll) -> Answer:
        if roll.latency_seconds:
            await asyncio.sleep(roll.latency_seconds)
        # From here to the commit or the start of the hold there is no await: on the single
        # event loop the idempotency check and the write cannot interleave with a duplicate.
        plan = plan_for(body.card.number) if body.card else None
        brand = brand_for(body.card.number) if body.card else None
        behaviour = plan.behaviour if plan else None
        op = Operation.from_request(body, brand, status_lags=behaviour == Behaviour.LAGGING_STATUS)
        # Derived from the card, so a bad-day card stays bad for its reference across restarts.
        wire_fault = _CARD_WIRE_FAULTS.get(behaviour) if behaviour else None
        wire_fault = wire_fault or roll.wire_fault

        existing = self.ledger.committed(op.reference)
        if existing is not None:
            if existing.op.fingerprint != op.fingerprint:
                return Answer(Outcome.CONFLICT, entry=existing)
            # Idempotency wins over faults: the stored decision stands, but the answer that
            # carries it can go wrong on the wire again.
            return Answer(Outcome.DECIDED, entry=existing, wire_fault=wire_fault)

        held = self.ledger.hold(op.reference)
        if held is not None:
            if held.op.fingerprint != op.fingerprint:
                return Answer(Outcome.CONFLICT, hold=held)
            return await self._await_hold(held, wire_fault)

        # The lost-response card loses its first answer whatever else fired.
        if behaviour == Behaviour.DROP:
            wire_fault = WireFault.DROP
        return await self._decide_fresh(op, plan, roll, wire_fault)

    def status(self, reference: str) -> Committed | Hold | None:
        """Answer a status query; None is `not_found`, also while the status index lags."""
        state = self.holds.poll(reference)
        if isinstance(state, Committed) and time.time() < self._indexed_at(state):
            return None
        return state

    def _indexed_at(self, entry: Committed) -> float:
        """When the status API starts to know a committed operation (epoch seconds)."""
        lag = self.faults.settings.status_lag_ms / 1000
        if entry.op.status_lags:
            lag = max(lag, self.settings.status_lag_seconds)
        if lag <= 0:
            return 0.0
        return epoch_seconds(entry.committed_at) + lag

    async def _decide_fresh(
        self, op: Operation, plan: CardPlan | None, roll: FaultRoll, wire_fault: WireFault | None
    ) -> Answer:
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

        hold = self._hold_for(op, plan, roll, decision)
        if hold is not None:
            logger.info("holding %s (%s)", op.reference, hold.kind.value)
            self.holds.start(hold)
            return await self._await_hold(hold, wire_fault)

        entry = self.ledger.commit(op, decision)
        self.holds.committed(entry.op)
        return Answer(Outcome.DECIDED, entry=entry, wire_fault=wire_fault)

    def _hold_for(
        self, op: Operation, plan: CardPlan | None, roll: FaultRoll, decision: Decision | None
    ) -> Hold | None:
        due_at = time.time() + self.settings.hold_seconds
        if plan is not None and plan.behaviour == Behaviour.SLOW_STATUS:
            return Hold(op, HoldKind.POLLS, due_at, Decision.approve())
        if roll.hold or (plan is not None and plan.behaviour in _TIMER_HOLD_BEHAVIOURS):
            return Hold(op, HoldKind.TIMER, due_at, decision)
        return None

    async def _await_hold(self, hold: Hold, wire_fault: WireFault | None) -> Answer:
        """Keep the caller waiting for the same decision as the original request."""
        if hold.kind == HoldKind.TIMER:
            timeout = max(0.0, hold.due_at - time.time()) + _TIMER_GRACE_SECONDS
        else:
            # Nothing commits a polls-hold on a timer: each request waits one hold period.
            timeout = self.settings.hold_seconds
        entry = await self.holds.wait(hold.op.reference, timeout)
        if entry is None:
            return Answer(Outcome.PENDING, hold=self.ledger.hold(hold.op.reference) or hold)
        return Answer(Outcome.DECIDED, entry=entry, wire_fault=wire_fault)
