"""Durapay's Prometheus metrics, every one defined here (docs/operations.md lists them all).

Two registries, one per kind of process, so each `/metrics` shows only what that process
counts: the API's (HTTP requests by route template, method and status) and the workers'
(business facts, counted where they become true). Both carry the process and Python runtime
collectors.

Business facts are counted once, after the database transaction that makes them true has
committed: a local activity retried after its commit finds its row already written and counts
nothing. A commit whose acknowledgement is lost is therefore not counted (at most once, never
twice). Labels hold only small fixed vocabularies (outcomes, types, kinds), never ids, amounts
or anything a client sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db.replication import SLOT_STATUS_SQL
from core.db.tables import PaymentIntent, ReconciliationDiscrepancy
from core.domain import IntentStatus, NetworkOutcome, TransactionStatus, TransactionType
from core.reconciliation import DiscrepancyKind, SweepTrigger

log = logging.getLogger("durapay.metrics")

# Counters' `_created` series double every exposition for a timestamp nobody alerts on.
disable_created_metrics()
API_REGISTRY = CollectorRegistry()
WORKER_REGISTRY = CollectorRegistry()
for _registry in (API_REGISTRY, WORKER_REGISTRY):
    ProcessCollector(registry=_registry)
    PlatformCollector(registry=_registry)
    if GC_COLLECTOR is not None:
        GCCollector(registry=_registry)

# ---- API: one observation per request, from the request log (api/request_log.py) ---------------
# A charge waits up to DURAPAY_CHARGE_WAIT_SECONDS (10 s) for the network: buckets reach past it.
REQUEST_SECONDS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    30.0,
)
# Any other method a client sends is `other`: a label must not take values a client invents.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "durapay_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
    registry=API_REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "durapay_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template, method and status.",
    ["route", "method", "status"],
    buckets=REQUEST_SECONDS_BUCKETS,
    registry=API_REGISTRY,
)


def observe_request(*, route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request. `route` is the route template (`/payment-intents/{id}`) or
    `unmatched`, never the path: ids would make a series per payment."""
    labels = {
        "route": route,
        "method": method if method in HTTP_METHODS else "other",
        "status": str(status),
    }
    HTTP_REQUESTS.labels(**labels).inc()
    HTTP_REQUEST_SECONDS.labels(**labels).observe(seconds)


# ---- API: admission control (api/in_flight.py, api/concurrency_limit.py) ---------------------
ADMISSION_REFUSALS = Counter(
    "durapay_api_admission_refusals",
    "Requests this API process refused at once (503 "
    "service_unavailable with Retry-After, nothing done) because it was at its concurrency "
    "limit.",
    registry=API_REGISTRY,
)
ADMISSION_LIMIT = Gauge(
    "durapay_api_admission_limit",
    "Requests this API process admits at once now: the "
    "adaptive limit, between DURAPAY_API_MIN_IN_FLIGHT and DURAPAY_API_MAX_IN_FLIGHT.",
    registry=API_REGISTRY,
)
REQUESTS_IN_FLIGHT = Gauge(
    "durapay_api_requests_in_flight",
    "Requests this API process is answering now (health probes and /metrics not counted).",
    registry=API_REGISTRY,
)


# ---- Every process: its event loop (core/loop_lag.py) ------------------------------------------
# How much later than asked a short sleep ends: the wait every coroutine of the process has on
# top of its own work (CPU taken by other processes, a blocking call, a long callback).
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LOOP_LAG_HELP = (
    "How much later than asked this process's event loop ran a timer, sampled "
    "every 100 ms: a wait added to every request or task it handles."
)
API_LOOP_LAG = Histogram(
    "durapay_event_loop_lag_seconds",
    _LOOP_LAG_HELP,
    buckets=LOOP_LAG_BUCKETS,
    registry=API_REGISTRY,
)
WORKER_LOOP_LAG = Histogram(
    "durapay_event_loop_lag_seconds",
    _LOOP_LAG_HELP,
    buckets=LOOP_LAG_BUCKETS,
    registry=WORKER_REGISTRY,
)


# ---- Workers: business facts ----------------------------------------------------------------
CHARGE_OUTCOMES = ("succeeded", "requires_capture", "declined", "failed", "unknown")
OPERATION_TYPES = (TransactionType.CAPTURE, TransactionType.VOID, TransactionType.REFUND)
OPERATION_OUTCOMES = ("succeeded", "declined", "failed", "unknown")
DEFINITE_OUTCOMES = ("succeeded", "declined", "failed")
SETTLED_BY = ("network", "operator")
STATUS_QUERY_ANSWERS = ("approved", "declined", "not_found", "unknown", "unavailable")
WEBHOOK_RESULTS = ("delivered", "http_error", "gone", "timeout", "network_error", "url_refused")

CHARGES = Counter(
    "durapay_charges",
    "Charge outcomes recorded: succeeded, requires_capture (authorized, "
    "manual capture), declined, failed (the network failed, nothing charged) or unknown (the "
    "answer was lost; counted again with its truth when it settles).",
    ["outcome"],
    registry=WORKER_REGISTRY,
)
OPERATIONS = Counter(
    "durapay_operations",
    "Capture, void and refund outcomes recorded, by type and outcome "
    "(succeeded, declined, failed, unknown; unknown ones are counted again when they settle).",
    ["type", "outcome"],
    registry=WORKER_REGISTRY,
)
UNKNOWN_OUTCOMES_OPENED = Counter(
    "durapay_unknown_outcomes_opened",
    "Operations whose network answer was lost (recorded as timeout), by transaction type.",
    ["type"],
    registry=WORKER_REGISTRY,
)
UNKNOWN_OUTCOMES_SETTLED = Counter(
    "durapay_unknown_outcomes_settled",
    "Unknown outcomes settled with the truth, by type, "
    "outcome, and by whom (the network's status answer, or an operator's verdict).",
    ["type", "outcome", "by"],
    registry=WORKER_REGISTRY,
)
STATUS_QUERIES = Counter(
    "durapay_reconciliation_status_queries",
    "Status queries sent to the card network about an "
    "unknown outcome, by its answer (unavailable: no answer, retried).",
    ["answer"],
    registry=WORKER_REGISTRY,
)
MANUAL_REVIEWS_OPENED = Counter(
    "durapay_manual_reviews_opened",
    "Payments put in front of an operator (`durapay review list`).",
    registry=WORKER_REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "durapay_webhook_attempts",
    "Webhook delivery attempts recorded, by result.",
    ["result"],
    registry=WORKER_REGISTRY,
)
DISCREPANCIES_OPENED = Counter(
    "durapay_reconciliation_discrepancies_opened",
    "Reconciliation discrepancies opened, by "
    "kind (the sweep's, and a late network answer contradicting a recorded outcome).",
    ["kind"],
    registry=WORKER_REGISTRY,
)
SWEEPS = Counter(
    "durapay_reconciliation_sweeps",
    "Reconciliation sweeps recorded, by trigger.",
    ["trigger"],
    registry=WORKER_REGISTRY,
)
# Someone reached Temporal with a client of their own, or a process runs with another master key.
# Unlike the business facts, counted where it happens (a refusal commits nothing).
REFUSAL_KINDS = (
    "not_encrypted",
    "unknown_key",
    "wrong_place",
    "failed_authentication",
    "misaddressed",
)
PAYLOADS_REFUSED = Counter(
    "durapay_temporal_payloads_refused",
    "Temporal payloads the workers refused before any "
    "code acted on them: in clear, under a key not ours, bound to another workflow or "
    "activity, failing authentication, or an operation input addressed to another payment or "
    "Update (misaddressed).",
    ["kind"],
    registry=WORKER_REGISTRY,
)

# Every series of a fixed vocabulary exists from the start at 0, so `rate()` and `increase()`
# see the first event and an alert is not blind until a series first appears.
for _outcome in CHARGE_OUTCOMES:
    CHARGES.labels(outcome=_outcome)
for _type in OPERATION_TYPES:
    for _outcome in OPERATION_OUTCOMES:
        OPERATIONS.labels(type=_type.value, outcome=_outcome)
for _type in TransactionType:
    UNKNOWN_OUTCOMES_OPENED.labels(type=_type.value)
    for _outcome in DEFINITE_OUTCOMES:
        for _by in SETTLED_BY:
            UNKNOWN_OUTCOMES_SETTLED.labels(type=_type.value, outcome=_outcome, by=_by)
for _answer in STATUS_QUERY_ANSWERS:
    STATUS_QUERIES.labels(answer=_answer)
for _result in WEBHOOK_RESULTS:
    WEBHOOK_ATTEMPTS.labels(result=_result)
for _kind in DiscrepancyKind:
    DISCREPANCIES_OPENED.labels(kind=_kind.value)
for _trigger in SweepTrigger:
    SWEEPS.labels(trigger=_trigger.value)
for _refusal_kind in REFUSAL_KINDS:
    PAYLOADS_REFUSED.labels(kind=_refusal_kind)


def count_refused_payload(kind: str) -> None:
    PAYLOADS_REFUSED.labels(kind=kind if kind in REFUSAL_KINDS else "failed_authentication").inc()


def count_recorded_outcome(
    *,
    transaction_type: str,
    status_before: str,
    outcome: NetworkOutcome,
    intent_status: str,
    operator_verdict: bool,
) -> None:
    """Count one outcome `record_outcome` has just committed for a transaction that was
    `status_before` (pending, or timeout for an unknown outcome being settled)."""
    label = outcome_label(
        transaction_type=transaction_type, outcome=outcome, intent_status=intent_status
    )
    if transaction_type == TransactionType.CHARGE.value:
        CHARGES.labels(outcome=label).inc()
    else:
        OPERATIONS.labels(type=transaction_type, outcome=label).inc()
    if outcome is NetworkOutcome.UNKNOWN:
        UNKNOWN_OUTCOMES_OPENED.labels(type=transaction_type).inc()
    elif status_before == TransactionStatus.TIMEOUT.value:
        settled_as = "succeeded" if outcome is NetworkOutcome.APPROVED else outcome.value
        UNKNOWN_OUTCOMES_SETTLED.labels(
            type=transaction_type,
            outcome=settled_as,
            by="operator" if operator_verdict else "network",
        ).inc()


def outcome_label(*, transaction_type: str, outcome: NetworkOutcome, intent_status: str) -> str:
    """An approved charge is `succeeded` or, authorized for a manual capture,
    `requires_capture` (the intent's status after it); an approved operation is `succeeded`;
    anything else is the network's outcome (declined, failed, unknown)."""
    if outcome is not NetworkOutcome.APPROVED:
        return outcome.value
    if (
        transaction_type == TransactionType.CHARGE.value
        and intent_status == IntentStatus.REQUIRES_CAPTURE.value
    ):
        return "requires_capture"
    return "succeeded"


# ---- Workers: gauges read from Postgres when scraped ------------------------------------------
@dataclass(frozen=True)
class DatabaseSnapshot:
    manual_reviews_open: int
    discrepancies_open: dict[str, int]
    # Logical replication slots (the event stream's consumers): WAL held, and whether a
    # consumer is reading now. A stalled consumer's slot keeps WAL until the disk fills.
    slot_lag_bytes: dict[str, int] = field(default_factory=dict)
    slot_consumer: dict[str, bool] = field(default_factory=dict)
    # Slots the server invalidated (wal_status `lost`): they hold no WAL, and their consumer
    # must rebuild from the table.
    slot_lost: dict[str, bool] = field(default_factory=dict)


class DatabaseGauges(Collector):
    """Gauges computed at scrape time from Postgres (two COUNTs on partial indexes: the open
    manual reviews, the open discrepancies), not maintained in memory: they are true for the
    whole deployment, whichever worker is scraped, and survive restarts. The worker's
    `/metrics` calls `refresh` first; if Postgres does not answer, the gauges are left out of
    that scrape rather than repeat an old value."""

    def __init__(self) -> None:
        self.snapshot: DatabaseSnapshot | None = None

    async def refresh(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.snapshot = None
        self.snapshot = await read_database_snapshot(sessions)

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "durapay_manual_reviews_open",
            "Payments waiting for an operator now (`durapay review list`).",
            value=snapshot.manual_reviews_open,
        )
        open_items = GaugeMetricFamily(
            "durapay_reconciliation_discrepancies_open",
            "Reconciliation discrepancies open now, by kind (`durapay reconcile list`).",
            labels=["kind"],
        )
        for kind in sorted({k.value for k in DiscrepancyKind} | set(snapshot.discrepancies_open)):
            open_items.add_metric([kind], snapshot.discrepancies_open.get(kind, 0))
        yield open_items
        lag = GaugeMetricFamily(
            "durapay_event_stream_lag_bytes",
            "WAL written since the event stream consumer "
            "of this replication slot last confirmed (`durapay events status`): what the "
            "database keeps for it.",
            labels=["slot"],
        )
        consumer = GaugeMetricFamily(
            "durapay_event_stream_consumer_running",
            "1 while a consumer holds the slot (`durapay events stream` connected), else 0.",
            labels=["slot"],
        )
        lost = GaugeMetricFamily(
            "durapay_event_stream_slot_lost",
            "1 once the server dropped WAL the slot had not "
            "confirmed (max_slot_wal_keep_size): its consumer must rebuild "
            "(`durapay events stream --rebuild`), else 0.",
            labels=["slot"],
        )
        for slot in sorted(snapshot.slot_lag_bytes):
            # A lost slot holds no WAL: the distance to its old position is not lag.
            if not snapshot.slot_lost.get(slot):
                lag.add_metric([slot], snapshot.slot_lag_bytes[slot])
            consumer.add_metric([slot], 1 if snapshot.slot_consumer.get(slot) else 0)
            lost.add_metric([slot], 1 if snapshot.slot_lost.get(slot) else 0)
        yield lag
        yield consumer
        yield lost


async def read_database_snapshot(sessions: async_sessionmaker[AsyncSession]) -> DatabaseSnapshot:
    async with sessions() as session:
        reviews = (
            await session.exec(
                select(func.count())
                .select_from(PaymentIntent)
                .where(
                    col(PaymentIntent.manual_review_since).is_not(None),
                    col(PaymentIntent.manual_review_resolved_at).is_(None),
                )
            )
        ).one()
        rows = (
            await session.exec(
                select(ReconciliationDiscrepancy.kind, func.count())
                .where(col(ReconciliationDiscrepancy.resolved_at).is_(None))
                .group_by(col(ReconciliationDiscrepancy.kind))
            )
        ).all()
        # sqlmodel types exec() for its select() and DML only; it runs text() the same way.
        slots = (
            (
                await session.exec(  # type: ignore[call-overload]
                    text(SLOT_STATUS_SQL)
                )
            )
            .mappings()
            .all()
        )
    return DatabaseSnapshot(
        int(reviews),
        {str(kind): int(count) for kind, count in rows},
        {str(r["slot_name"]): int(r["lag"]) for r in slots},
        {str(r["slot_name"]): bool(r["consumer"]) for r in slots},
        {str(r["slot_name"]): r["wal_status"] == "lost" for r in slots},
    )


DATABASE_GAUGES = DatabaseGauges()
WORKER_REGISTRY.register(DATABASE_GAUGES)


# ---- Workers: Temporal Schedules, read from Temporal when scraped -----------------------------
# Whoever reaches Temporal can pause a schedule, and a paused one stays paused across worker
# restarts (by design: an operator's pause must hold), so nothing but this gauge would say the
# sweep or the audit checkpoint stopped. A read answers within SCHEDULE_READ_SECONDS or the
# scrape goes on without it; one read serves every scrape for SCHEDULE_CACHE_SECONDS.
SCHEDULE_READ_SECONDS = 2.0
SCHEDULE_CACHE_SECONDS = 5.0

# schedule id -> paused (True), running (False) or unknown (None: Temporal did not say).
ScheduleStates = Callable[[], Awaitable[Mapping[str, bool | None]]]


class ScheduleGauges(Collector):
    """`durapay_schedule_paused{schedule}`: 1 paused, 0 running. A schedule whose state is
    unknown (Temporal down or slow) is left out of the scrape rather than reported running."""

    def __init__(
        self,
        *,
        read_seconds: float = SCHEDULE_READ_SECONDS,
        cache_seconds: float = SCHEDULE_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_seconds = read_seconds
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._paused: dict[str, bool] = {}
        self._read_at: float | None = None
        self._lock = asyncio.Lock()  # scrapes arriving together share one read

    async def refresh(self, read: ScheduleStates) -> None:
        async with self._lock:
            if self._read_at is not None and self._clock() - self._read_at < self._cache_seconds:
                return
            try:
                async with asyncio.timeout(self._read_seconds):
                    states = await read()
            except Exception as error:  # noqa: BLE001 (the gauge is left out of this scrape)
                log.warning("metrics: schedule states unavailable (%s)", type(error).__name__)
                states = {}
            self._paused = {
                schedule: paused for schedule, paused in states.items() if paused is not None
            }
            self._read_at = self._clock()

    def collect(self) -> Iterator[Metric]:
        if not self._paused:
            return
        paused = GaugeMetricFamily(
            "durapay_schedule_paused",
            "1 while the Temporal Schedule is paused (or deleted: "
            "it fires no more until a worker re-creates it), 0 while it runs.",
            labels=["schedule"],
        )
        for schedule in sorted(self._paused):
            paused.add_metric([schedule], 1 if self._paused[schedule] else 0)
        yield paused


SCHEDULE_GAUGES = ScheduleGauges()
WORKER_REGISTRY.register(SCHEDULE_GAUGES)
