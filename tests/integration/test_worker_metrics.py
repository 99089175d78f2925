"""A worker's own port on the real stack: `/livez`, `/readyz`, and `/metrics` with our business
counters (each fact counted once, where it commits) and the Temporal SDK's metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from client import DurapayClient
from core.db.session import create_engine, session_factory
from tests.integration.conftest import CARD_4242, card, create_intent
from tests.integration.helpers import assert_eventually, charge, settled_intent
from tests.integration.webhook_receiver import Answer, WebhookReceiver
from tests.stack import RunningStack, free_port
from workers.health_server import HealthServer, postgres_check, temporal_check
from workers.schedules import AUDIT_CHECKPOINT_SCHEDULE_ID, RECONCILIATION_SCHEDULE_ID

pytestmark = pytest.mark.integration

HELD_CARD = "4000000000001018"  # held past the adapter's timeout, then approved
DECLINED_CARD = "4000000000000002"


@pytest.fixture(scope="module")
async def worker_http(stack: RunningStack) -> AsyncIterator[httpx.AsyncClient]:
    urls = stack.state()["workerMetricsUrls"]
    assert isinstance(urls, dict), urls
    base = str(urls["worker-1"]).removesuffix("/metrics")
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield http


async def scrape(worker_http: httpx.AsyncClient) -> str:
    response = await worker_http.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


def sample(exposition: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


class Counts:
    """Deltas of chosen series between a scrape taken now and a later one."""

    def __init__(self, worker_http: httpx.AsyncClient, before: str) -> None:
        self._http = worker_http
        self._before = before

    @classmethod
    async def start(cls, worker_http: httpx.AsyncClient) -> Counts:
        return cls(worker_http, await scrape(worker_http))

    async def deltas(self, *series: tuple[str, dict[str, str]]) -> list[float]:
        after = await scrape(self._http)
        found = []
        for name, labels in series:
            before, now = sample(self._before, name, **labels), sample(after, name, **labels)
            assert before is not None and now is not None, f"{name}{labels} is missing"
            found.append(now - before)
        return found


def charges(outcome: str) -> tuple[str, dict[str, str]]:
    return "durapay_charges_total", {"outcome": outcome}


def settled(kind: str, outcome: str) -> tuple[str, dict[str, str]]:
    return "durapay_unknown_outcomes_settled_total", {
        "type": kind,
        "outcome": outcome,
        "by": "network",
    }


async def test_worker_livez_and_readyz_answer_200(worker_http: httpx.AsyncClient) -> None:
    live = await worker_http.get("/livez")
    ready = await worker_http.get("/readyz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ok", "checks": {"postgres": "ok", "temporal": "ok"}},
    )
    assert (await worker_http.get("/nowhere")).status_code == 404
    assert (await worker_http.post("/metrics")).status_code == 405


async def test_worker_metrics_hold_ours_and_the_temporal_sdks(
    worker_http: httpx.AsyncClient,
) -> None:
    response = await worker_http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "durapay_charges",
        "durapay_operations",
        "durapay_unknown_outcomes_opened",
        "durapay_reconciliation_status_queries",
        "durapay_webhook_attempts",
        "durapay_manual_reviews_open",
        "durapay_reconciliation_discrepancies_open",
        "process_resident_memory_bytes",
    } <= names
    sdk = {name for name in names if name.startswith("temporal_")}
    # What the SDK counts from start-up: its pollers, task slots and calls to the server.
    assert {
        "temporal_num_pollers",
        "temporal_worker_task_slots_available",
        "temporal_request",
        "temporal_request_latency",
    } <= sdk, sorted(sdk)


@pytest.mark.parametrize(
    ("number", "outcome"), [(CARD_4242["number"], "succeeded"), (DECLINED_CARD, "declined")]
)
async def test_a_charge_counts_once_under_its_outcome(
    durapay: DurapayClient, worker_http: httpx.AsyncClient, number: str, outcome: str
) -> None:
    counts = await Counts.start(worker_http)
    intent = await create_intent(durapay)
    response = await charge(durapay, intent["id"], card(number))
    assert response.status_code in (200, 402), response.text
    # The API answers once the outcome is recorded, so the count is there already; a late
    # settlement of an earlier test's held charge would also count, and is subtracted.
    [counted, late] = await counts.deltas(charges(outcome), settled("charge", outcome))
    assert counted - late == 1


async def test_a_manual_capture_counts_the_authorization_then_the_capture(
    durapay: DurapayClient, worker_http: httpx.AsyncClient
) -> None:
    counts = await Counts.start(worker_http)
    intent = await create_intent(durapay, captureMethod="manual")
    assert (await charge(durapay, intent["id"], CARD_4242)).status_code == 200
    captured = await durapay.post(f"/payment-intents/{intent['id']}/capture", {})
    assert captured.status_code == 200, captured.text
    assert await counts.deltas(
        charges("requires_capture"),
        ("durapay_operations_total", {"type": "capture", "outcome": "succeeded"}),
    ) == [1, 1]


async def test_a_lost_answer_counts_unknown_then_its_settlement(
    durapay: DurapayClient, worker_http: httpx.AsyncClient
) -> None:
    counts = await Counts.start(worker_http)
    intent = await create_intent(durapay)
    response = await charge(durapay, intent["id"], card(HELD_CARD))
    assert response.status_code == 202, response.text
    assert (await settled_intent(durapay, intent["id"]))["status"] == "succeeded"
    unknown, opened, settled_now, succeeded, approved_answers = await counts.deltas(
        charges("unknown"),
        ("durapay_unknown_outcomes_opened_total", {"type": "charge"}),
        settled("charge", "succeeded"),
        charges("succeeded"),
        ("durapay_reconciliation_status_queries_total", {"answer": "approved"}),
    )
    assert (unknown, opened, settled_now, succeeded) == (1, 1, 1, 1)
    assert approved_answers >= 1  # the status query that settled it


async def test_webhook_attempts_count_once_by_result(
    durapay: DurapayClient, worker_http: httpx.AsyncClient
) -> None:
    http_error = ("durapay_webhook_attempts_total", {"result": "http_error"})
    delivered = ("durapay_webhook_attempts_total", {"result": "delivered"})
    with WebhookReceiver() as receiver:
        path = f"/hook/{uuid.uuid4().hex[:10]}"
        receiver.script(path, Answer(500), Answer(200))
        endpoint = await durapay.post(
            "/webhook-endpoints",
            {"url": receiver.url(path), "enabledEvents": ["payment.succeeded"]},
        )
        assert endpoint.status_code == 201, endpoint.text
        counts = await Counts.start(worker_http)
        intent = await create_intent(durapay)
        assert (await charge(durapay, intent["id"], CARD_4242)).status_code == 200

        async def delivered_once() -> bool:
            assert [r.answered for r in receiver.at(path)] == [500, 200]
            assert await counts.deltas(http_error, delivered) == [1, 1]
            return True

        # The first retry follows DURAPAY_WEBHOOK_FIRST_DELAY_SECONDS (5 s).
        await assert_eventually(delivered_once, timeout=40)


async def test_a_paused_schedule_shows_on_the_worker_gauge(
    worker_http: httpx.AsyncClient, temporal: Client
) -> None:
    """Whoever reaches Temporal can pause the sweep, and the pause outlives worker restarts:
    the worker's gauge says so within its cache period, and says when it runs again."""
    schedule = temporal.get_schedule_handle(RECONCILIATION_SCHEDULE_ID)

    def paused_gauge(value: float) -> Any:
        async def check() -> bool:
            exposition = await scrape(worker_http)
            assert (
                sample(exposition, "durapay_schedule_paused", schedule=RECONCILIATION_SCHEDULE_ID)
                == value
            )
            # The other schedule is reported beside it, running.
            assert (
                sample(exposition, "durapay_schedule_paused", schedule=AUDIT_CHECKPOINT_SCHEDULE_ID)
                == 0
            )
            return True

        return check

    await assert_eventually(paused_gauge(0), timeout=30)
    await schedule.pause(note="test_worker_metrics: paused on purpose")
    try:
        assert (await schedule.describe()).schedule.state.paused
        await assert_eventually(paused_gauge(1), timeout=30)
    finally:
        await schedule.unpause(note="test_worker_metrics: resumed")
    await assert_eventually(paused_gauge(0), timeout=30)


async def test_worker_readyz_is_503_while_postgres_is_unreachable(stack: RunningStack) -> None:
    """The worker's own check against a Postgres nobody listens for (a closed port), with the
    stack's real Temporal: only Postgres is down, and the gauges read from it are left out."""
    engine = create_engine(f"postgresql+asyncpg://durapay:x@127.0.0.1:{free_port()}/durapay")
    sessions = session_factory(engine)
    temporal = await stack.temporal_client()
    server = await HealthServer.start(
        "127.0.0.1",
        0,
        sessions=sessions,
        sdk_metrics_url=None,
        checks={"postgres": postgres_check(sessions), "temporal": temporal_check(temporal)},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            ready = await http.get("/readyz")
            live = await http.get("/livez")
            metrics = await http.get("/metrics")
    finally:
        await server.close()
        await engine.dispose()
    body: dict[str, Any] = ready.json()
    assert ready.status_code == 503
    assert body["checks"] == {"postgres": "down", "temporal": "ok"}
    assert body["down"] == ["postgres"]
    assert live.status_code == 200
    names = {family.name for family in text_string_to_metric_families(metrics.text)}
    assert metrics.status_code == 200 and "durapay_charges" in names
    assert "durapay_manual_reviews_open" not in names
