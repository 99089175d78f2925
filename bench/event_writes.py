"""The write path's step of `make bench`: how many payment events one merchant can append.

Every state change of a payment appends its event through one writer (core/db/queries.py:
`append_event`, via `transition_intent` after a change). Anything that writer locks for a whole
merchant lines up that merchant's writers behind each other however many processes and cores
are added. This step measures it directly, on the stack's database, without the API, Temporal
or the network in between: `writers` concurrent writers (default 32) each record payments
end to end through the real writer code, three transactions per payment as the API and the
worker write them:
  1. the intent and its `payment.created` (the API's create);
  2. under the intent's row lock, `payment.processing` (the worker's charge attempt);
  3. under the intent's row lock, `payment.succeeded` (the worker's outcome).
Each transaction appends one event, so operations per second are events per second.

It runs two layouts, alternating in rounds: every writer on ONE merchant, and the writers spread
over as many merchants as there are writers; the ratio one merchant / spread says whether a
single merchant gets the throughput the database gives many (≥ 0.9), or a merchant-wide lock
caps it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.cpu import CpuUse, snapshot
from bench.measurement import verdict as pass_or_fail
from core.db.queries import append_event, lock_intent, transition_intent
from core.db.session import create_engine, session_factory
from core.db.tables import PaymentIntent
from core.domain import IntentStatus, new_id
from core.settings import to_asyncpg_url
from core.state_machine import IntentAction

WRITE_PATH_TARGET = 0.9  # events/s of one merchant / events/s spread over many, at least
EVENTS_PER_PAYMENT = 3


@dataclass
class WriteRun:
    name: str
    events: int
    seconds: float
    latencies: list[float]  # one per committed transaction (one event each)
    failures: list[str]
    cpu: CpuUse | None

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    def line(self) -> str:
        ordered = sorted(self.latencies) or [float("nan")]
        p50, p95 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.95)]
        text = (
            f"{self.name:<24} {self.per_second:8.1f} events/s   p50 {p50 * 1000:7.1f} ms"
            f"   p95 {p95 * 1000:7.1f} ms   errors {len(self.failures)}"
        )
        if self.failures:
            text += f"   (first: {self.failures[0][:200]})"
        if self.cpu:
            text += "\n" + self.cpu.line()
        return text


async def _record_payment(
    sessions: async_sessionmaker[AsyncSession], merchant_id: str, latencies: list[float]
) -> None:
    """One payment's three events, each in its own transaction, through the real writers."""
    started = time.perf_counter()
    async with sessions() as session, session.begin():
        intent = PaymentIntent(
            id=new_id("pi"),
            merchant_id=merchant_id,
            amount_in_cents=1000,
            currency="usd",
            capture_method="automatic",
            status=IntentStatus.CREATED.value,
        )
        session.add(intent)
        await session.flush()
        await session.refresh(intent)
        await append_event(
            session,
            cause=f"{intent.id}:created",
            event_type="payment.created",
            intent=intent,
            transaction_id=None,
        )
    latencies.append(time.perf_counter() - started)
    for action, changes in (
        (IntentAction.START_ATTEMPT, None),
        (IntentAction.CHARGE_SUCCEEDED, {"amount_received": 1000}),
    ):
        started = time.perf_counter()
        async with sessions() as session, session.begin():
            locked = await lock_intent(session, intent.id)
            await transition_intent(
                session,
                locked,
                action,
                cause=f"{intent.id}:{action}",
                transaction_id=None,
                changes=changes,
            )
        latencies.append(time.perf_counter() - started)


async def _run(
    sessions: async_sessionmaker[AsyncSession], merchant_of_writer: Sequence[str], payments: int
) -> tuple[float, list[float], list[str]]:
    """`payments` payments shared by the writers (each takes the next as soon as its last is
    recorded); writer i writes for merchant_of_writer[i]."""
    latencies: list[float] = []
    failures: list[str] = []
    remaining = payments

    async def writer(merchant_id: str) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1  # no await between the check and this: no other writer interleaves
            try:
                await _record_payment(sessions, merchant_id, latencies)
            except Exception as error:  # noqa: BLE001 (a failed write is a result here)
                failures.append(f"{type(error).__name__}: {error}")

    started = time.perf_counter()
    await asyncio.gather(*(writer(m) for m in merchant_of_writer))
    return time.perf_counter() - started, latencies, failures


async def measure_event_writes(
    database_url: str,
    merchants: Sequence[str],
    processes: Mapping[str, int],
    *,
    events: int,
    warmup: int,
    rounds: int = 4,
) -> tuple[WriteRun, WriteRun]:
    """(all writers on merchants[0], writer i on merchants[i]); one writer per merchant.

    The two layouts alternate over `rounds` rounds of events / rounds each, so that a change in
    the machine's load (other processes on a shared machine) hits both alike. Every writer
    records payments through its own pooled connection, like the API's and workers' sessions."""
    writers = len(merchants)
    engine = create_engine(to_asyncpg_url(database_url), pool_size=writers)
    sessions = session_factory(engine)
    payments = max(1, events // EVENTS_PER_PAYMENT // rounds)
    layouts = {
        f"1 merchant, {writers} writers": [merchants[0]] * writers,
        f"{writers} merchants, 1 each": list(merchants),
    }
    runs = {name: WriteRun(name, 0, 0.0, [], [], None) for name in layouts}
    spent: dict[str, dict[str, float]] = {name: {} for name in layouts}
    try:
        for layout in layouts.values():  # connections, prepared statements, caches
            await _run(sessions, layout, warmup)
        for round_number in range(rounds):
            # A B, B A, …: a drift in the machine's load over the run hits both alike.
            order = list(layouts.items())[:: -1 if round_number % 2 else 1]
            for name, layout in order:
                before = snapshot(processes)
                seconds, latencies, failures = await _run(sessions, layout, payments)
                after, run = snapshot(processes), runs[name]
                run.events += payments * EVENTS_PER_PAYMENT
                run.seconds += seconds
                run.latencies += latencies
                run.failures += failures
                for process in after.keys() & before.keys():
                    spent[name][process] = (
                        spent[name].get(process, 0.0) + after[process] - before[process]
                    )
    finally:
        await engine.dispose()
    for name, run in runs.items():
        run.cpu = CpuUse(spent[name], len(run.latencies), run.seconds)
        print(run.line(), flush=True)
    one, spread = runs.values()
    return one, spread


def print_write_path(one: WriteRun, spread: WriteRun) -> None:
    ratio = one.per_second / spread.per_second if spread.per_second else float("nan")
    verdict = pass_or_fail(ratio >= WRITE_PATH_TARGET)
    print("\nwrite path (payment events appended through core/db/queries.py)")
    print(f"  one merchant       {one.per_second:8.1f} events/s")
    print(f"  spread             {spread.per_second:8.1f} events/s")
    print(f"  one / spread       {ratio:8.3f}   target ≥ {WRITE_PATH_TARGET}   {verdict}")
