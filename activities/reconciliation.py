"""The reconciliation sweep's side effects: read both sides, compare, record the report.

One activity does the whole sweep on purpose. A window holds as many transactions and ledger
entries as the business made in it (thousands at modest volume); passing them through workflow
history would copy every row into it and hit Temporal's payload limits long before the
database would notice. Only counts and a bounded list of discrepancies come back.

A problem is one open item per (reference, kind) until resolved (`core/db/discrepancies.py`): a
sweep opens what is new (event and WARNING once), notes the open items it finds again, and
clears (resolves with "cleared by sweep <run>") the open items it checked and no longer finds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
from sqlalchemy import and_, func, or_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.db.discrepancies import (
    clear_by_sweep,
    lock_open_sweep_items,
    mark_seen,
    open_discrepancy,
)
from core.db.tables import (
    PaymentIntent,
    ReconciliationDiscrepancy,
    ReconciliationRun,
    Transaction,
)
from core.metrics import DISCREPANCIES_OPENED, SWEEPS
from core.reconciliation import (
    DEFAULT_STUCK_AFTER_SECONDS,
    UNKNOWN_STATUSES,
    Comparison,
    Discrepancy,
    DiscrepancyKind,
    LedgerEntry,
    OurTransaction,
    ReconciliationCounts,
    compare,
    ledger_references_in_window,
    triage,
)

log = logging.getLogger("durapay.reconciliation")

# The workflow result (and the CLI's table) carries at most this many rows; the database has all.
MAX_REPORTED_DISCREPANCIES = 200
STATEMENT_ROWS = 1000
# Sweeps record one at a time (a manual one may overlap the scheduled one): each sorts what it
# found against the open items as the previous one left them.
SWEEP_RECORD_LOCK = "durapay.reconciliation_sweep"
T = TypeVar("T")


@dataclass
class ReconcileWindowInput:
    run_id: str
    window_start: datetime
    window_end: datetime
    trigger: str
    # A pending/timeout row created this long before window_end is stuck, whatever the window.
    stuck_after_seconds: int = DEFAULT_STUCK_AFTER_SECONDS


@dataclass
class ReconciliationReport:
    run_id: str
    counts: ReconciliationCounts
    # The first MAX_REPORTED_DISCREPANCIES; `counts.discrepancies` is the full number.
    discrepancies: list[Discrepancy]


class ReconciliationActivities:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        cardnet_url: str,
        ledger_timeout_seconds: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self._http = http
        self._cardnet_url = cardnet_url.rstrip("/")
        self._ledger_timeout = ledger_timeout_seconds

    @activity.defn
    async def reconcile_window(self, request: ReconcileWindowInput) -> ReconciliationReport:
        """Compare one window and record its report; a retry returns the report already stored.

        Order matters. Our rows are read *before* the ledger: a transaction is marked succeeded
        only after the network committed, so whatever we read as succeeded is already in the
        ledger fetched next. That holds for the stuck rows (any age) and the rows of open
        stuck items too, which are checked whatever the window so they clear once settled.
        References the ledger shows in the window but our first read missed are read again
        *after* the fetch: our row is written before the network is called, so it exists by
        then. Either other order reports races as discrepancies.
        """
        stored = await self._stored_report(request.run_id)
        if stored is not None:
            return stored
        window = {"window_start": request.window_start, "window_end": request.window_end}
        stuck_before = request.window_end - timedelta(seconds=request.stuck_after_seconds)
        ours = await self.load_transactions_in_window(request.window_start, request.window_end)
        ours += await self.load_stuck_transactions(stuck_before)
        recheck = await self.load_open_stuck_references()
        ours += await self.load_transactions_by_reference(
            recheck - {t.network_reference for t in ours}
        )
        ledger = await self.fetch_network_ledger()
        known = {t.network_reference for t in ours} | {
            t.reversal_reference for t in ours if t.reversal_reference is not None
        }
        missing = ledger_references_in_window(ledger, **window) - known
        ours += await self.load_transactions_by_reference(missing)
        comparison = compare(ours, ledger, **window, stuck_before=stuck_before, recheck=recheck)
        if await self.record_reconciliation_report(request, comparison):
            log.info(
                "reconciliation run %s (%s): %s", request.run_id, request.trigger, comparison.counts
            )
        # Recorded now, by this attempt or a concurrent one: the stored report is the report.
        report = await self._stored_report(request.run_id)
        if report is None:
            raise RuntimeError(f"reconciliation run {request.run_id} was not recorded")
        return report

    # ---- steps (plain methods: one activity runs them all, see the module docstring) ----------
    async def load_transactions_in_window(
        self, start: datetime, end: datetime
    ) -> list[OurTransaction]:
        created_at = col(Transaction.created_at)
        return await self._load_transactions(and_(created_at >= start, created_at <= end))

    async def load_stuck_transactions(self, stuck_before: datetime) -> list[OurTransaction]:
        return await self._load_transactions(
            and_(
                col(Transaction.status).in_(sorted(UNKNOWN_STATUSES)),
                col(Transaction.created_at) <= stuck_before,
            )
        )

    async def load_open_stuck_references(self) -> set[str]:
        async with self._sessions() as session:
            rows = await session.exec(
                select(ReconciliationDiscrepancy.network_reference).where(
                    col(ReconciliationDiscrepancy.kind) == DiscrepancyKind.STUCK_UNSETTLED.value,
                    col(ReconciliationDiscrepancy.resolved_at).is_(None),
                )
            )
            return set(rows.all())

    async def load_transactions_by_reference(
        self, references: Iterable[str]
    ) -> list[OurTransaction]:
        found: list[OurTransaction] = []
        for wanted in _chunks(sorted(references)):
            found += await self._load_transactions(
                or_(
                    col(Transaction.network_reference).in_(wanted),
                    col(Transaction.reversal_reference).in_(wanted),
                )
            )
        return found

    async def fetch_network_ledger(self) -> list[LedgerEntry]:
        # The simulator has no paging: the whole ledger in one answer (a real network would
        # serve settlement files per day; the window filter would select the files).
        response = await self._http.get(f"{self._cardnet_url}/ledger", timeout=self._ledger_timeout)
        response.raise_for_status()
        return [LedgerEntry.from_json(entry) for entry in response.json()["data"]]

    async def record_reconciliation_report(
        self, request: ReconcileWindowInput, comparison: Comparison
    ) -> bool:
        """Run row and the open items in one transaction; False if the run is already in.

        New problems are opened (their event and WARNING come from `open_discrepancy`), open
        ones found again are marked seen by this run, and open ones it checked but no longer
        finds are cleared. Sets the newly opened / still open / cleared counts.
        """
        counts = comparison.counts
        async with self._sessions() as session, session.begin():
            await session.exec(select(func.pg_advisory_xact_lock(func.hashtext(SWEEP_RECORD_LOCK))))
            if await session.get(ReconciliationRun, request.run_id) is not None:
                return False
            plan = triage(comparison, await lock_open_sweep_items(session))
            counts.newly_opened, counts.still_open = len(plan.to_open), len(plan.still_open)
            counts.cleared = len(plan.to_clear)
            await session.exec(
                insert(ReconciliationRun).values(
                    id=request.run_id,
                    window_start=request.window_start,
                    window_end=request.window_end,
                    trigger=request.trigger,
                    transactions_checked=counts.transactions_checked,
                    ledger_entries_checked=counts.ledger_entries_checked,
                    in_flight=counts.in_flight,
                    discrepancies=counts.discrepancies,
                    newly_opened=counts.newly_opened,
                    still_open=counts.still_open,
                    cleared=counts.cleared,
                )
            )
            # The open items are locked and other sweeps wait on SWEEP_RECORD_LOCK, so each of
            # these opens (only code that opens a sweep's kind outside a sweep could win first).
            for found in plan.to_open:
                await open_discrepancy(
                    session, **_fields(found), run_id=request.run_id, detail=_detail(found, request)
                )
            await mark_seen(session, [item_id for _, item_id in plan.still_open], request.run_id)
            await clear_by_sweep(session, plan.to_clear, request.run_id)
        # Committed now, once per run (a retry finds the run row above and returns False).
        SWEEPS.labels(trigger=request.trigger).inc()
        for found in plan.to_open:
            DISCREPANCIES_OPENED.labels(kind=str(found.kind)).inc()
        return True

    # ---- helpers ---------------------------------------------------------------------------------
    async def _load_transactions(self, condition: Any) -> list[OurTransaction]:
        open_review = and_(
            col(PaymentIntent.manual_review_since).is_not(None),
            col(PaymentIntent.manual_review_resolved_at).is_(None),
        )
        query = (
            select(Transaction, open_review)
            .join(PaymentIntent, col(PaymentIntent.id) == col(Transaction.payment_intent_id))
            .where(condition)
        )
        async with self._sessions() as session:
            rows = (await session.exec(query)).all()
        return [
            OurTransaction(
                network_reference=t.network_reference,
                merchant_id=t.merchant_id,
                payment_intent_id=t.payment_intent_id,
                transaction_id=t.id,
                type=t.type,
                status=t.status,
                amount_in_cents=t.amount_in_cents,
                currency=t.currency,
                created_at=t.created_at,
                in_manual_review=bool(in_review),
                reversal_reference=t.reversal_reference,
            )
            for t, in_review in rows
        ]

    async def _stored_report(self, run_id: str) -> ReconciliationReport | None:
        """The run's counts and the items it opened or found again (the first ones)."""
        row = ReconciliationDiscrepancy
        async with self._sessions() as session:
            run = await session.get(ReconciliationRun, run_id)
            if run is None:
                return None
            # An item found again by a later run names that run as last seen; only a retry
            # that comes after a later sweep would miss it (the counts stay exact).
            rows = (
                await session.exec(
                    select(row)
                    .where(or_(col(row.run_id) == run_id, col(row.last_seen_run_id) == run_id))
                    .order_by(col(row.kind), col(row.network_reference))
                    .limit(MAX_REPORTED_DISCREPANCIES)
                )
            ).all()
        counts = ReconciliationCounts(
            transactions_checked=run.transactions_checked,
            ledger_entries_checked=run.ledger_entries_checked,
            in_flight=run.in_flight,
            discrepancies=run.discrepancies,
            newly_opened=run.newly_opened,
            still_open=run.still_open,
            cleared=run.cleared,
        )
        return ReconciliationReport(
            run_id,
            counts,
            [
                Discrepancy(
                    kind=r.kind,
                    network_reference=r.network_reference,
                    merchant_id=r.merchant_id,
                    payment_intent_id=r.payment_intent_id,
                    transaction_id=r.transaction_id,
                    our_status=r.our_status,
                    network_status=r.network_status,
                    our_amount_in_cents=r.our_amount_in_cents,
                    network_amount_in_cents=r.network_amount_in_cents,
                    currency=r.currency,
                    network_currency=r.network_currency,
                    discrepancy_id=r.id,
                    newly_opened=r.run_id == run_id,
                )
                for r in rows
            ],
        )


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    # Postgres takes at most 32,767 bind parameters per statement: references go in chunks.
    for start in range(0, len(items), STATEMENT_ROWS):
        yield items[start : start + STATEMENT_ROWS]


def _detail(found: Discrepancy, request: ReconcileWindowInput) -> dict[str, Any]:
    if found.kind == DiscrepancyKind.STUCK_UNSETTLED:
        return {"stuckAfterSeconds": request.stuck_after_seconds}
    return {}


def _fields(found: Discrepancy) -> dict[str, Any]:
    return {
        "kind": found.kind,
        "network_reference": found.network_reference,
        "merchant_id": found.merchant_id,
        "payment_intent_id": found.payment_intent_id,
        "transaction_id": found.transaction_id,
        "our_status": found.our_status,
        "network_status": found.network_status,
        "our_amount_in_cents": found.our_amount_in_cents,
        "network_amount_in_cents": found.network_amount_in_cents,
        "currency": found.currency,
        "network_currency": found.network_currency,
    }
