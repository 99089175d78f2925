"""The reconciliation sweep's side effects: read both sides, compare, record the report.

One activity does the whole sweep on purpose. A window holds as many transactions and ledger
entries as the business made in it (thousands at modest volume); passing them through workflow
history would copy every row into it and hit Temporal's payload limits long before the
database would notice. Only counts and a bounded list of discrepancies come back.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
from sqlalchemy import and_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.db.queries import event_id_for
from core.db.tables import (
    Event,
    PaymentIntent,
    ReconciliationDiscrepancy,
    ReconciliationRun,
    Transaction,
)
from core.reconciliation import (
    DISCREPANCY_EVENT_TYPE,
    Comparison,
    Discrepancy,
    LedgerEntry,
    OurTransaction,
    ReconciliationCounts,
    compare,
    ledger_references_in_window,
)

log = logging.getLogger("durapay.reconciliation")

# The workflow result (and the CLI's table) carries at most this many rows; the database has all.
MAX_REPORTED_DISCREPANCIES = 200
STATEMENT_ROWS = 1000
T = TypeVar("T")


@dataclass
class ReconcileWindowInput:
    run_id: str
    window_start: datetime
    window_end: datetime
    trigger: str


@dataclass
class ReconciliationReport:
    run_id: str
    counts: ReconciliationCounts
    # The first MAX_REPORTED_DISCREPANCIES; `counts.discrepancies` is the full number.
    discrepancies: list[Discrepancy]


class ReconciliationActivities:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient,
                 cardnet_url: str, ledger_timeout_seconds: float = 60.0) -> None:
        self._sessions = sessions
        self._http = http
        self._cardnet_url = cardnet_url.rstrip("/")
        self._ledger_timeout = ledger_timeout_seconds

    @activity.defn
    async def reconcile_window(self, request: ReconcileWindowInput) -> ReconciliationReport:
        """Compare one window and record its report; a retry returns the report already stored.

        Order matters. Our rows are read *before* the ledger: a transaction is marked succeeded
        only after the network committed, so whatever we read as succeeded is already in the
        ledger fetched next. References the ledger shows in the window but our first read
        missed are read again *after* the fetch: our row is written before the network is
        called, so it exists by then. Either other order reports races as discrepancies.
        """
        stored = await self._stored_report(request.run_id)
        if stored is not None:
            return stored
        window = {"window_start": request.window_start, "window_end": request.window_end}
        ours = await self.load_transactions_in_window(request.window_start, request.window_end)
        ledger = await self.fetch_network_ledger()
        known = {t.network_reference for t in ours}
        missing = ledger_references_in_window(ledger, **window) - known
        ours += await self.load_transactions_by_reference(missing)
        comparison = compare(ours, ledger, **window)
        recorded = await self.record_reconciliation_report(request, comparison)
        if not recorded:  # a concurrent attempt committed first: its report is the report
            return await self._stored_report(request.run_id) or _report(request, comparison)
        for found in comparison.discrepancies:
            log.warning("reconciliation discrepancy %s reference=%s intent=%s transaction=%s "
                        "merchant=%s ours=%s/%s network=%s/%s currency=%s run=%s", found.kind,
                        found.network_reference, found.payment_intent_id, found.transaction_id,
                        found.merchant_id, found.our_status, found.our_amount_in_cents,
                        found.network_status, found.network_amount_in_cents, found.currency,
                        request.run_id)
        log.info("reconciliation run %s (%s): %s", request.run_id, request.trigger,
                 comparison.counts)
        return _report(request, comparison)

    # ---- steps (plain methods: one activity runs them all, see the module docstring) ----------
    async def load_transactions_in_window(self, start: datetime,
                                          end: datetime) -> list[OurTransaction]:
        created_at = col(Transaction.created_at)
        return await self._load_transactions(and_(created_at >= start, created_at <= end))

    async def load_transactions_by_reference(self,
                                             references: Iterable[str]) -> list[OurTransaction]:
        found: list[OurTransaction] = []
        for wanted in _chunks(sorted(references)):
            found += await self._load_transactions(
                col(Transaction.network_reference).in_(wanted))
        return found

    async def fetch_network_ledger(self) -> list[LedgerEntry]:
        # The simulator has no paging: the whole ledger in one answer (a real network would
        # serve settlement files per day; the window filter would select the files).
        response = await self._http.get(f"{self._cardnet_url}/ledger",
                                        timeout=self._ledger_timeout)
        response.raise_for_status()
        return [LedgerEntry.from_json(entry) for entry in response.json()["data"]]

    async def record_reconciliation_report(self, request: ReconcileWindowInput,
                                           comparison: Comparison) -> bool:
        """Run row, discrepancy rows and their events in one transaction; False if already in."""
        counts = comparison.counts
        async with self._sessions() as session, session.begin():
            inserted = await session.exec(
                insert(ReconciliationRun).values(
                    id=request.run_id, window_start=request.window_start,
                    window_end=request.window_end, trigger=request.trigger,
                    transactions_checked=counts.transactions_checked,
                    ledger_entries_checked=counts.ledger_entries_checked,
                    in_flight=counts.in_flight, discrepancies=counts.discrepancies,
                ).on_conflict_do_nothing().returning(col(ReconciliationRun.id)))
            if inserted.first() is None:
                return False
            for chunk in _chunks(comparison.discrepancies):
                await session.exec(insert(ReconciliationDiscrepancy).values(
                    [_discrepancy_row(request.run_id, d) for d in chunk]
                ).on_conflict_do_nothing())
                await session.exec(insert(Event).values(
                    [_event_row(request.run_id, d) for d in chunk]
                ).on_conflict_do_nothing())
        return True

    # ---- helpers ---------------------------------------------------------------------------------
    async def _load_transactions(self, condition: Any) -> list[OurTransaction]:
        open_review = and_(col(PaymentIntent.manual_review_since).is_not(None),
                           col(PaymentIntent.manual_review_resolved_at).is_(None))
        query = (
            select(Transaction, open_review)
            .join(PaymentIntent, col(PaymentIntent.id) == col(Transaction.payment_intent_id))
            .where(condition))
        async with self._sessions() as session:
            rows = (await session.exec(query)).all()
        return [OurTransaction(
            network_reference=t.network_reference, merchant_id=t.merchant_id,
            payment_intent_id=t.payment_intent_id, transaction_id=t.id, type=t.type,
            status=t.status, amount_in_cents=t.amount_in_cents, currency=t.currency,
            created_at=t.created_at, in_manual_review=bool(in_review)) for t, in_review in rows]

    async def _stored_report(self, run_id: str) -> ReconciliationReport | None:
        async with self._sessions() as session:
            run = await session.get(ReconciliationRun, run_id)
            if run is None:
                return None
            rows = (await session.exec(
                select(ReconciliationDiscrepancy)
                .where(col(ReconciliationDiscrepancy.run_id) == run_id)
                .order_by(col(ReconciliationDiscrepancy.kind),
                          col(ReconciliationDiscrepancy.network_reference))
                .limit(MAX_REPORTED_DISCREPANCIES))).all()
        counts = ReconciliationCounts(
            transactions_checked=run.transactions_checked,
            ledger_entries_checked=run.ledger_entries_checked, in_flight=run.in_flight,
            discrepancies=run.discrepancies)
        return ReconciliationReport(run_id, counts, [Discrepancy(
            kind=r.kind, network_reference=r.network_reference, merchant_id=r.merchant_id,
            payment_intent_id=r.payment_intent_id, transaction_id=r.transaction_id,
            our_status=r.our_status, network_status=r.network_status,
            our_amount_in_cents=r.our_amount_in_cents,
            network_amount_in_cents=r.network_amount_in_cents, currency=r.currency,
            network_currency=r.network_currency) for r in rows])


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    # Postgres takes at most 32,767 bind parameters per statement; a discrepancy row has 14.
    for start in range(0, len(items), STATEMENT_ROWS):
        yield items[start:start + STATEMENT_ROWS]


def _report(request: ReconcileWindowInput, comparison: Comparison) -> ReconciliationReport:
    return ReconciliationReport(request.run_id, comparison.counts,
                                comparison.discrepancies[:MAX_REPORTED_DISCREPANCIES])


def _cause(run_id: str, found: Discrepancy) -> str:
    return f"{run_id}:{found.network_reference}:discrepancy"


def _discrepancy_row(run_id: str, found: Discrepancy) -> dict[str, Any]:
    row_id = "rcd_" + hashlib.sha256(_cause(run_id, found).encode()).hexdigest()[:24]
    return {"id": row_id, "run_id": run_id, **_fields(found)}


def _fields(found: Discrepancy) -> dict[str, Any]:
    return {
        "kind": found.kind, "network_reference": found.network_reference,
        "merchant_id": found.merchant_id, "payment_intent_id": found.payment_intent_id,
        "transaction_id": found.transaction_id, "our_status": found.our_status,
        "network_status": found.network_status,
        "our_amount_in_cents": found.our_amount_in_cents,
        "network_amount_in_cents": found.network_amount_in_cents, "currency": found.currency,
        "network_currency": found.network_currency,
    }


def _event_row(run_id: str, found: Discrepancy) -> dict[str, Any]:
    # Ledger entries carry no card data and neither does this: ids, statuses and amounts only.
    data = {
        "runId": run_id, "kind": found.kind, "networkReference": found.network_reference,
        "merchantId": found.merchant_id, "paymentIntentId": found.payment_intent_id,
        "transactionId": found.transaction_id, "ourStatus": found.our_status,
        "networkStatus": found.network_status, "ourAmountInCents": found.our_amount_in_cents,
        "networkAmountInCents": found.network_amount_in_cents, "currency": found.currency,
        "networkCurrency": found.network_currency,
    }
    return {"id": event_id_for(_cause(run_id, found)), "merchant_id": found.merchant_id,
            "payment_intent_id": found.payment_intent_id, "transaction_id": found.transaction_id,
            "type": DISCREPANCY_EVENT_TYPE, "data": data}
