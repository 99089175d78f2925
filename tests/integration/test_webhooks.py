"""Webhooks on the real stack, delivered to a real local HTTP receiver and verified with the
Standard Webhooks reference library. The stack runs with a short backoff (3 s, 6 s, 8 s …)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import WebhookVerificationError
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.webhooks import (
    AttemptInput,
    AttemptResult,
    WebhookActivities,
    new_http_client,
)
from client import DurapayClient
from core.crypto import Cipher
from core.db.session import create_engine, session_factory
from core.keyring import Purpose
from core.settings import Settings, to_asyncpg_url
from core.webhooks import WebhookSchedule
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, own_stack, signed_merchant
from tests.integration.webhook_receiver import Answer, WebhookReceiver
from tests.stack import RunningStack, free_port, stop_process
from workers.schedules import WEBHOOK_REAPER_SCHEDULE_ID
from workflows.webhook_delivery import (
    WebhookDeliveryInput,
    WebhookDeliveryResult,
    WebhookDeliveryWorkflow,
)
from workflows.webhook_reaper import WebhookReaperInput, WebhookReaperResult, WebhookReaperWorkflow

FIRST_DELAY, FACTOR = 3.0, 2.0
WEBHOOK_ENV = {
    "DURAPAY_WEBHOOK_FIRST_DELAY_SECONDS": str(FIRST_DELAY),
    "DURAPAY_WEBHOOK_BACKOFF_FACTOR": str(FACTOR),
    "DURAPAY_WEBHOOK_MAX_DELAY_SECONDS": "8",
    "DURAPAY_WEBHOOK_HORIZON_SECONDS": "600",
    "DURAPAY_WEBHOOK_TIMEOUT_SECONDS": "3",
    # The scheduled reaper leaves every test's rows alone (the reaper tests run their own).
    "DURAPAY_WEBHOOK_REAPER_GRACE_SECONDS": str(365 * 86_400),
}
TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"


# ---- fixtures: our own stack (short backoff), a receiver, merchants ------------------------------
@pytest.fixture(scope="module")
def wh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "wh", extra_env=WEBHOOK_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


# Well inside DURAPAY_WEBHOOK_TIMEOUT_SECONDS, and far above a loopback round trip.
ANSWER_DELAY = timedelta(seconds=0.4)


class SlowReceiver(WebhookReceiver):
    """Answers each request ANSWER_DELAY after it arrived: no attempt can take less."""

    def _next(self, path: str) -> Answer:
        time.sleep(ANSWER_DELAY.total_seconds())  # in the request's own handler thread
        return super()._next(path)


@pytest.fixture
def slow_receiver() -> Iterator[WebhookReceiver]:
    with SlowReceiver() as running:
        yield running


@pytest.fixture(scope="module")
async def wh_db(wh_stack: RunningStack) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(wh_stack.database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def shop(wh_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(wh_stack, f"Hooks {uuid.uuid4().hex[:6]}") as client:
        yield client


def _path() -> str:
    return f"/hook/{uuid.uuid4().hex[:10]}"


async def _endpoint(shop: DurapayClient, url: str, events: list[str]) -> dict[str, Any]:
    response = await shop.post("/webhook-endpoints", {"url": url, "enabledEvents": events})
    assert response.status_code == 201, response.text
    return response.json()


async def _created_event(shop: DurapayClient, intent_id: str) -> dict[str, Any]:
    events = (await shop.get(f"/payment-intents/{intent_id}/events")).json()
    events = events["data"] if isinstance(events, dict) else events
    return next(e for e in events if e["type"] == "payment.created")


async def _deliveries(shop: DurapayClient, endpoint_id: str) -> list[dict[str, Any]]:
    response = await shop.get(f"/webhook-endpoints/{endpoint_id}/deliveries?limit=100")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def _redeliver(
    shop: DurapayClient, event_id: str, endpoint_id: str | None = None, key: str | None = None
) -> list[dict[str, Any]]:
    body = {"endpointId": endpoint_id} if endpoint_id else None
    response = await shop.post(f"/events/{event_id}/redeliver", body, idempotency_key=key)
    assert response.status_code == 202, response.text
    return response.json()["data"]


async def _received(
    receiver: WebhookReceiver, path: str, count: int, timeout: float = 60
) -> list[Any]:
    async def enough() -> list[Any] | None:
        got = receiver.at(path)
        return got if len(got) >= count else None

    return await assert_eventually(
        enough, timeout=timeout, interval=0.1, message=f"{count} requests at {path}"
    )


# ---- endpoints API -------------------------------------------------------------------------
async def test_endpoint_crud_shows_the_secret_only_once(
    wh_stack: RunningStack, shop: DurapayClient, receiver: WebhookReceiver
) -> None:
    created = await _endpoint(shop, receiver.url(_path()), ["payment.succeeded"])
    assert created["id"].startswith("we_") and created["secret"].startswith("whsec_")
    assert created == {
        **created,
        "object": "webhook_endpoint",
        "status": "enabled",
        "enabledEvents": ["payment.succeeded"],
        "disabledReason": None,
    }
    fetched = (await shop.get(f"/webhook-endpoints/{created['id']}")).json()
    assert "secret" not in fetched and fetched["url"] == created["url"]
    listed = (await shop.get("/webhook-endpoints")).json()
    assert [e["id"] for e in listed["data"]] == [created["id"]]
    assert "secret" not in listed["data"][0]

    disabled = await shop.post(f"/webhook-endpoints/{created['id']}", {"status": "disabled"})
    assert (
        disabled.json()["status"] == "disabled" and disabled.json()["disabledReason"] == "merchant"
    )
    enabled = await shop.post(
        f"/webhook-endpoints/{created['id']}", {"status": "enabled", "enabledEvents": ["*"]}
    )
    assert enabled.json() == {
        **enabled.json(),
        "status": "enabled",
        "disabledReason": None,
        "enabledEvents": ["*"],
    }

    async with signed_merchant(wh_stack) as other:
        assert (await other.get(f"/webhook-endpoints/{created['id']}")).status_code == 404
        assert (
            await other.request("DELETE", f"/webhook-endpoints/{created['id']}")
        ).status_code == 404
    deleted = await shop.request("DELETE", f"/webhook-endpoints/{created['id']}")
    assert deleted.json() == {"id": created["id"], "object": "webhook_endpoint", "deleted": True}
    missing = await shop.get(f"/webhook-endpoints/{created['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


async def test_unknown_event_type_is_refused(
    shop: DurapayClient, receiver: WebhookReceiver
) -> None:
    response = await shop.post(
        "/webhook-endpoints", {"url": receiver.url("/x"), "enabledEvents": ["payment.exploded"]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "enabledEvents"


async def test_metadata_address_is_refused_even_where_private_is_allowed(
    shop: DurapayClient,
) -> None:
    response = await shop.post(
        "/webhook-endpoints",
        {"url": "http://169.254.169.254/latest/meta-data", "enabledEvents": ["*"]},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_request_error",
            "code": "url_not_allowed",
            "param": "url",
            "message": response.json()["error"]["message"],
        }
    }


async def test_private_urls_are_refused_unless_configured(
    wh_stack: RunningStack, receiver: WebhookReceiver
) -> None:
    """A second API process on the same stack, with the default (production) setting."""
    port = free_port()
    env = {**wh_stack.env, "DURAPAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "false"}
    log = open(wh_stack.home / "strict-api.log", "wb")  # noqa: SIM115 (closed below)
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        async def healthy() -> bool:
            async with httpx.AsyncClient(timeout=1) as http:
                try:
                    return (await http.get(f"{url}/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

        await assert_eventually(healthy, timeout=30)
        async with signed_merchant(wh_stack, api_url=url) as strict:
            for target in (
                receiver.url("/x"),
                "https://127.0.0.1/x",
                "https://localhost/x",
                "https://10.1.2.3/x",
                "https://[::1]/x",
                "https://192.168.0.1/x",
                # IPv4 inside IPv6: NAT64, 6to4, IPv4-compatible; site-local
                "https://[64:ff9b::7f00:1]/x",
                "https://[2002:a9fe:a9fe::]/x",
                "https://[::127.0.0.1]/x",
                "https://[fec0::1]/x",
                # a public address, but a port other than 443
                "https://1.1.1.1:8443/x",
                "https://1.1.1.1:22/x",
            ):
                response = await strict.post(
                    "/webhook-endpoints", {"url": target, "enabledEvents": ["*"]}
                )
                assert response.status_code == 400, (target, response.text)
                error = response.json()["error"]
                assert error["type"] == "invalid_request_error" and error["param"] == "url"
                assert error["code"] in ("url_not_allowed", "url_invalid"), error
            port_refused = await strict.post(
                "/webhook-endpoints", {"url": "https://1.1.1.1:8443/x", "enabledEvents": ["*"]}
            )
            assert port_refused.json()["error"]["code"] == "url_not_allowed"
            assert "port 8443" in port_refused.json()["error"]["message"]
            # Port 443 is what production allows by default.
            created = await strict.post(
                "/webhook-endpoints", {"url": "https://1.1.1.1:443/x", "enabledEvents": QUIET}
            )
            assert created.status_code == 201, created.text
            await strict.request("DELETE", f"/webhook-endpoints/{created.json()['id']}")
    finally:
        stop_process(api, 20)
        log.close()


# Endpoints that only get explicit redeliveries subscribe to an event these tests never cause,
# so the payment's own fan-out (once wired) does not send them anything.
QUIET = ["payment.refunded"]


# ---- deliveries ------------------------------------------------------------------------------
async def test_failing_twice_then_accepting_gives_one_accepted_delivery(
    shop: DurapayClient, slow_receiver: WebhookReceiver
) -> None:
    receiver, path = slow_receiver, _path()
    receiver.script(path, Answer(500, body=b"boom"), Answer(502), Answer(200, body=b"thanks"))
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)
    intent = await create_intent(shop)
    event = await _created_event(shop, intent["id"])
    [delivery] = await _redeliver(shop, event["id"], endpoint["id"])
    assert delivery["id"].startswith("whd_") and delivery["status"] == "pending"

    got = await _received(receiver, path, 3)
    gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
    assert FIRST_DELAY - 0.3 <= gaps[0] < FIRST_DELAY + 5, gaps
    assert FIRST_DELAY * FACTOR - 0.3 <= gaps[1] < FIRST_DELAY * FACTOR + 5, gaps
    assert [r.answered for r in got] == [500, 502, 200]
    for request in got:  # the same message every time: one webhook-id, each signed afresh
        assert request.headers["webhook-id"] == event["id"]
        assert request.verify(endpoint["secret"])["id"] == event["id"]

    async def succeeded() -> dict[str, Any] | None:
        mine = [d for d in await _deliveries(shop, endpoint["id"]) if d["id"] == delivery["id"]]
        return mine[0] if mine and mine[0]["status"] == "succeeded" else None

    final = await assert_eventually(succeeded, timeout=20)
    assert [a["statusCode"] for a in final["attempts"]] == [500, 502, 200]
    assert [a["attemptNumber"] for a in final["attempts"]] == [1, 2, 3]
    assert final["attempts"][0]["responseBody"] == "boom"
    _assert_durations_span_the_answers(final["attempts"])
    assert final["eventType"] == "payment.created" and final["attemptCount"] == 3
    await asyncio.sleep(FIRST_DELAY * FACTOR * 2)  # nothing may arrive after the accepted one
    assert len(receiver.at(path)) == 3


def _assert_durations_span_the_answers(attempts: list[dict[str, Any]]) -> None:
    """Each attempt lasted at least the receiver's delay, and ended before the next began."""
    starts = [datetime.fromisoformat(a["attemptedAt"]) for a in attempts]
    durations = [timedelta(milliseconds=a["durationMs"]) for a in attempts]
    assert all(d >= ANSWER_DELAY for d in durations), durations
    ends = [start + duration for start, duration in zip(starts, durations, strict=True)]
    assert all(end <= next_start for end, next_start in zip(ends, starts[1:], strict=False)), (
        starts,
        durations,
    )
    assert ends[-1] <= datetime.now(UTC), (starts, durations)


async def test_redeliver_is_idempotent_per_key_and_keeps_the_event_id(
    shop: DurapayClient, receiver: WebhookReceiver
) -> None:
    path = _path()
    endpoint = await _endpoint(shop, receiver.url(path), ["payment.created"])
    other_path = _path()
    await _endpoint(shop, receiver.url(other_path), ["payment.succeeded"])  # not subscribed
    intent = await create_intent(shop)
    event = await _created_event(shop, intent["id"])
    first = await _redeliver(shop, event["id"], key="again-1")
    again = await _redeliver(shop, event["id"], key="again-1")
    assert [d["id"] for d in first] == [d["id"] for d in again]
    assert [d["endpointId"] for d in first] == [endpoint["id"]]
    fresh = await _redeliver(shop, event["id"])
    assert fresh[0]["id"] != first[0]["id"]
    expected = 3  # the two redeliveries and the original delivery
    got = await _received(receiver, path, expected)
    await asyncio.sleep(1.0)
    assert len(receiver.at(path)) == expected
    assert {r.headers["webhook-id"] for r in got} == {event["id"]}
    assert receiver.at(other_path) == []
    missing = await shop.post("/events/evt_nope/redeliver")
    assert missing.status_code == 404


async def test_rotated_secret_signs_alongside_the_new_one(
    shop: DurapayClient, receiver: WebhookReceiver
) -> None:
    path = _path()
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)
    rotated = await shop.post(
        f"/webhook-endpoints/{endpoint['id']}/rotate-secret", {"gracePeriodSeconds": 3600}
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != endpoint["secret"]
    intent = await create_intent(shop)
    event = await _created_event(shop, intent["id"])
    await _redeliver(shop, event["id"], endpoint["id"])
    [request] = (await _received(receiver, path, 1))[-1:]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    request.verify(new_secret)
    request.verify(endpoint["secret"])

    newest = (
        await shop.post(
            f"/webhook-endpoints/{endpoint['id']}/rotate-secret", {"gracePeriodSeconds": 0}
        )
    ).json()["secret"]
    count = len(receiver.at(path))
    await _redeliver(shop, event["id"], endpoint["id"])
    request = (await _received(receiver, path, count + 1))[-1]
    request.verify(newest)
    with pytest.raises(WebhookVerificationError):
        request.verify(new_secret)


async def test_gone_disables_the_endpoint_at_once(
    shop: DurapayClient, receiver: WebhookReceiver, wh_db: asyncpg.Pool
) -> None:
    path = _path()
    receiver.script(path, Answer(410))
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)
    intent = await create_intent(shop)
    event = await _created_event(shop, intent["id"])
    [delivery] = await _redeliver(shop, event["id"], endpoint["id"])

    async def disabled() -> dict[str, Any] | None:
        found = (await shop.get(f"/webhook-endpoints/{endpoint['id']}")).json()
        return found if found["status"] == "disabled" else None

    found = await assert_eventually(disabled, timeout=20)
    assert found["disabledReason"] == "gone"
    [final] = [d for d in await _deliveries(shop, endpoint["id"]) if d["id"] == delivery["id"]]
    assert final["status"] == "failed" and len(final["attempts"]) == 1
    events = await wh_db.fetch(
        "SELECT data FROM event WHERE type = 'webhook_endpoint.disabled' "
        "AND data->>'endpointId' = $1",
        endpoint["id"],
    )
    assert len(events) == 1
    # The merchant reads it too: it is about their endpoint, unlike operator events.
    listed = (await shop.get("/events?type=webhook_endpoint.disabled")).json()["data"]
    assert [e["data"]["endpointId"] for e in listed] == [endpoint["id"]]
    again = await shop.post(f"/events/{event['id']}/redeliver", {"endpointId": endpoint["id"]})
    assert again.status_code == 409


async def test_worker_sigkill_during_the_backoff_still_delivers(
    wh_stack: RunningStack, shop: DurapayClient, receiver: WebhookReceiver
) -> None:
    path = _path()
    # 503 + Retry-After: 10 keeps the delivery on a durable timer long enough to kill the worker.
    receiver.script(path, Answer(503, headers={"Retry-After": "10"}), Answer(200))
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)
    intent = await create_intent(shop)
    event = await _created_event(shop, intent["id"])
    [delivery] = await _redeliver(shop, event["id"], endpoint["id"])

    async def first_attempt_recorded() -> bool:
        mine = [d for d in await _deliveries(shop, endpoint["id"]) if d["id"] == delivery["id"]]
        return bool(mine and mine[0]["attemptCount"] == 1)

    await assert_eventually(first_attempt_recorded, timeout=20, interval=0.1)
    worker_pid = int(wh_stack.state()["children"]["worker-1"])
    os.kill(worker_pid, signal.SIGKILL)
    assert len(receiver.at(path)) == 1  # killed while waiting on the timer

    got = await _received(receiver, path, 2, timeout=90)
    assert got[1].at - got[0].at >= 10 - 0.3  # no sooner than Retry-After asked
    got[1].verify(endpoint["secret"])
    restarted = int(wh_stack.state()["children"]["worker-1"])
    assert restarted != worker_pid


async def test_a_payment_is_delivered_signed_and_filtered(
    shop: DurapayClient, receiver: WebhookReceiver
) -> None:
    every, succeeded_only = _path(), _path()
    all_events = await _endpoint(shop, receiver.url(every), ["*"])
    filtered = await _endpoint(shop, receiver.url(succeeded_only), ["payment.succeeded"])
    intent = await create_intent(shop)
    response = await shop.post(
        f"/payment-intents/{intent['id']}/transactions", {"type": "charge", "card": CARD_4242}
    )
    assert response.status_code == 200, response.text

    got = await _received(receiver, every, 3)
    bodies = [r.verify(all_events["secret"]) for r in got]
    assert sorted(b["type"] for b in bodies) == [
        "payment.created",
        "payment.processing",
        "payment.succeeded",
    ]
    for request, body in zip(got, bodies, strict=True):
        assert request.headers["webhook-id"] == body["id"]
        assert body["data"]["paymentId"] == intent["id"]
    [only] = await _received(receiver, succeeded_only, 1)
    assert only.verify(filtered["secret"])["type"] == "payment.succeeded"
    await asyncio.sleep(2)
    assert len(receiver.at(every)) == 3 and len(receiver.at(succeeded_only)) == 1
    deliveries = await _deliveries(shop, all_events["id"])
    assert {d["origin"] for d in deliveries} == {"event"}


# ---- time-skipping server, real activities on the stack's database -----------------------------
async def _planted_delivery(shop: DurapayClient, wh_db: asyncpg.Pool, endpoint_id: str) -> str:
    """A pending delivery of a fresh `payment.created` to the endpoint, run by the test itself."""
    intent = await create_intent(shop)
    event = await _created_event(shop, intent["id"])
    delivery_id = f"whd_{uuid.uuid4().hex[:24]}"
    merchant_id = await wh_db.fetchval("SELECT merchant_id FROM event WHERE id = $1", event["id"])
    await wh_db.execute(
        "INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, origin) "
        "VALUES ($1, $2, $3, $4, 'redeliver')",
        delivery_id,
        merchant_id,
        event["id"],
        endpoint_id,
    )
    return delivery_id


@asynccontextmanager
async def _webhook_activities(
    wh_stack: RunningStack, **settings: Any
) -> AsyncIterator[WebhookActivities]:
    """The real activities on the stack's database (the local stack's URL policy by default)."""
    configured = Settings(
        home=wh_stack.home,
        **{
            "webhook_allow_private_networks": True,
            "webhook_allowed_ports": "*",
            "webhook_timeout_seconds": 3,
            **settings,
        },
    )
    engine = create_engine(to_asyncpg_url(wh_stack.database_url), pool_size=2)
    try:
        async with new_http_client() as http:
            yield WebhookActivities(
                http=http,
                sessions=session_factory(engine),
                webhook_secrets=Cipher(configured.resolved_key_ring(), Purpose.WEBHOOK_SECRETS),
                settings=configured,
            )
    finally:
        await engine.dispose()


@asynccontextmanager
async def _skipping_worker(
    wh_stack: RunningStack,
) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """A time-skipping server and a worker on it running the real webhook activities."""
    async with (
        _webhook_activities(wh_stack) as webhooks,
        await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(TEST_SERVER)
        ) as env,
    ):
        queue = f"tq-{uuid.uuid4()}"
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[WebhookDeliveryWorkflow],
            activities=[
                webhooks.send_webhook,
                webhooks.record_webhook_attempt,
                webhooks.fail_webhook_delivery,
            ],
        ):
            yield env, queue


async def test_three_days_of_failures_fail_the_delivery_and_disable_the_endpoint(
    wh_stack: RunningStack, shop: DurapayClient, receiver: WebhookReceiver, wh_db: asyncpg.Pool
) -> None:
    path = _path()
    receiver.script(path, Answer(500))
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)
    delivery_id = await _planted_delivery(shop, wh_db, endpoint["id"])
    async with _skipping_worker(wh_stack) as (env, queue):
        result = await env.client.execute_workflow(
            WebhookDeliveryWorkflow.run,
            WebhookDeliveryInput(delivery_id, WebhookSchedule()),  # the real 3 days
            id=delivery_id,
            task_queue=queue,
        )
    assert result == WebhookDeliveryResult(delivered=False, attempts=77)
    assert len(receiver.at(path)) == 77
    [final] = [d for d in await _deliveries(shop, endpoint["id"]) if d["id"] == delivery_id]
    assert final["status"] == "failed" and len(final["attempts"]) == 77
    found = (await shop.get(f"/webhook-endpoints/{endpoint['id']}")).json()
    assert (found["status"], found["disabledReason"]) == ("disabled", "failing")
    events = await wh_db.fetch(
        "SELECT type, data FROM event WHERE data->>'endpointId' = $1", endpoint["id"]
    )
    assert [e["type"] for e in events] == ["webhook_endpoint.disabled"]


# An hour of the production schedule: attempts at 0, 5, 30, 155 and 780 s, and the last one on
# the horizon (after 2820 s instead of 3125 s).
HOUR = WebhookSchedule(horizon_seconds=3600)
HOUR_TIMERS = [5.0, 25.0, 125.0, 625.0]


@pytest.mark.parametrize(
    ("answer", "posts", "stored_body"),
    [
        (Answer(500, body=b"bad\x00body\x00"), 6, "badbody"),
        (Answer(503, headers={"Retry-After": "\u00b2"}, body=b"busy"), 6, "busy"),
        (Answer(200, body=b"\x00thanks"), 1, "thanks"),
    ],
    ids=["500-nul-in-body", "503-retry-after-superscript-two", "200-nul-in-body"],
)
async def test_a_hostile_answer_keeps_the_delivery_on_its_schedule(
    wh_stack: RunningStack,
    shop: DurapayClient,
    receiver: WebhookReceiver,
    wh_db: asyncpg.Pool,
    answer: Answer,
    posts: int,
    stored_body: str,
) -> None:
    """A NUL byte in the answer, or `Retry-After: ²`, must not make recording the attempt fail
    after the POST (an unbounded retry of the activity would send it again every ≤30 s for
    ever). Over an hour of (skipped) time, a real receiver gets exactly the POSTs of the
    schedule, and every attempt is recorded."""
    path = _path()
    receiver.script(path, answer)
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)
    delivery_id = await _planted_delivery(shop, wh_db, endpoint["id"])
    async with _skipping_worker(wh_stack) as (env, queue):
        handle = await env.client.start_workflow(
            WebhookDeliveryWorkflow.run,
            WebhookDeliveryInput(delivery_id, HOUR),
            id=delivery_id,
            task_queue=queue,
            execution_timeout=timedelta(hours=2),
        )  # the old loop ran out this clock
        try:
            result: WebhookDeliveryResult | None = await handle.result()
        except WorkflowFailureError:
            result = None
        history = await handle.fetch_history()
    got = receiver.at(path)
    assert len(got) == posts, f"{len(got)} POSTs; the schedule's hour has {posts}"
    assert {r.headers["webhook-id"] for r in got} == {got[0].headers["webhook-id"]}
    assert result == WebhookDeliveryResult(delivered=posts == 1, attempts=posts)
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    if posts == 1:
        assert timers == []
    else:  # the backoff, untouched by the unreadable Retry-After; the last lands on the hour
        assert timers[:4] == HOUR_TIMERS and 2800 < timers[4] <= 2820, timers
    [final] = [d for d in await _deliveries(shop, endpoint["id"]) if d["id"] == delivery_id]
    assert final["status"] == ("succeeded" if posts == 1 else "failed")
    assert [a["attemptNumber"] for a in final["attempts"]] == list(range(1, posts + 1))
    assert {(a["statusCode"], a["responseBody"]) for a in final["attempts"]} == {
        (answer.status, stored_body)
    }


async def test_a_port_the_operator_no_longer_allows_is_refused_at_delivery(
    wh_stack: RunningStack, shop: DurapayClient, receiver: WebhookReceiver, wh_db: asyncpg.Pool
) -> None:
    """The endpoint was created where any port was allowed; a worker configured with the
    production default (80, 443) checks again at the attempt and sends nothing."""
    path = _path()
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)
    delivery_id = await _planted_delivery(shop, wh_db, endpoint["id"])
    async with _webhook_activities(wh_stack, webhook_allowed_ports="80,443") as webhooks:
        sent = await ActivityEnvironment().run(webhooks.send_webhook, AttemptInput(delivery_id, 1))
        assert sent.status_code is None and sent.error is not None
        assert sent.error.startswith("url_not_allowed") and f"port {receiver.port}" in sent.error
        outcome = await ActivityEnvironment().run(webhooks.record_webhook_attempt, sent)
    assert outcome.result is AttemptResult.RETRY
    assert receiver.at(path) == []
    [final] = [d for d in await _deliveries(shop, endpoint["id"]) if d["id"] == delivery_id]
    assert [a["error"] for a in final["attempts"]] == [sent.error]


async def test_an_event_plans_one_delivery_per_subscribed_endpoint(
    shop: DurapayClient, receiver: WebhookReceiver, wh_db: asyncpg.Pool
) -> None:
    """The transaction that appends an event plans its deliveries (`core/db/deliveries.py`):
    one per enabled endpoint subscribed to its type; the API starts `payment.created`'s."""
    every, succeeded_only, switched_off = _path(), _path(), _path()
    all_events = await _endpoint(shop, receiver.url(every), ["*"])
    await _endpoint(shop, receiver.url(succeeded_only), ["payment.succeeded"])
    off = await _endpoint(shop, receiver.url(switched_off), ["*"])
    await shop.post(f"/webhook-endpoints/{off['id']}", {"status": "disabled"})
    intent = await create_intent(shop)
    event = await _created_event(shop, intent["id"])
    [request] = await _received(receiver, every, 1)
    assert request.verify(all_events["secret"])["id"] == event["id"]
    rows = await wh_db.fetch(
        "SELECT endpoint_id, origin FROM webhook_delivery WHERE event_id = $1", event["id"]
    )
    assert [(r["endpoint_id"], r["origin"]) for r in rows] == [(all_events["id"], "event")]
    await asyncio.sleep(1.0)
    assert receiver.at(succeeded_only) == [] and receiver.at(switched_off) == []


async def test_endpoint_list_pages_newest_first(
    shop: DurapayClient, receiver: WebhookReceiver
) -> None:
    created = [(await _endpoint(shop, receiver.url(_path()), ["*"]))["id"] for _ in range(3)]
    first = (await shop.get("/webhook-endpoints?limit=2")).json()
    assert [e["id"] for e in first["data"]] == created[:0:-1] and first["hasMore"] is True
    rest = (await shop.get(f"/webhook-endpoints?limit=2&startingAfter={created[1]}")).json()
    assert [e["id"] for e in rest["data"]] == [created[0]] and rest["hasMore"] is False
    missing = await shop.get("/webhook-endpoints?startingAfter=we_nope")
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "startingAfter"


# ---- the reaper: deliveries nobody started -------------------------------------------------------
async def _stranded_delivery(
    wh_db: asyncpg.Pool, event: dict[str, Any], endpoint: dict[str, Any], *, age: timedelta
) -> str:
    """A delivery row as the transaction that appended its event plans it, whose start never
    happened (the planner lost between its commit and the start)."""
    delivery_id = f"whd_stranded_{uuid.uuid4().hex[:12]}"
    await wh_db.execute(
        "INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, origin, status, "
        "attempt_count, created_at, updated_at) SELECT $1, merchant_id, id, $3, 'event', "
        "'pending', 0, now() - $4::interval, now() - $4::interval FROM event WHERE id = $2",
        delivery_id,
        event["id"],
        endpoint["id"],
        age,
    )
    return delivery_id


async def _reap(temporal: Client) -> WebhookReaperResult:
    # Longer than this module runs: only the rows a test back-dates are past the grace period,
    # never a delivery another test's run has yet to start.
    return await temporal.execute_workflow(
        WebhookReaperWorkflow.run,
        WebhookReaperInput(
            grace_seconds=1800, webhooks=WebhookSchedule(FIRST_DELAY, FACTOR, 8, 600)
        ),
        id=f"reaper-test-{uuid.uuid4().hex[:8]}",
        task_queue="durapay-payments",
    )


async def test_the_reaper_starts_a_pending_delivery_nobody_started_once(
    wh_stack: RunningStack, shop: DurapayClient, receiver: WebhookReceiver, wh_db: asyncpg.Pool
) -> None:
    path = _path()
    endpoint = await _endpoint(shop, receiver.url(path), QUIET)  # the API starts nothing
    event = await _created_event(shop, (await create_intent(shop))["id"])
    stranded = await _stranded_delivery(wh_db, event, endpoint, age=timedelta(hours=1))
    fresh = await _stranded_delivery(wh_db, event, endpoint, age=timedelta(minutes=1))
    temporal = await wh_stack.temporal_client()

    assert (await _reap(temporal)).started == 1
    [request] = await _received(receiver, path, 1)
    assert request.verify(endpoint["secret"])["id"] == event["id"]
    assert await temporal.get_workflow_handle(stranded).result() == {
        "delivered": True,
        "attempts": 1,
    }
    # Within its grace period a delivery is left to whoever planned it.
    with pytest.raises(RPCError):
        await temporal.get_workflow_handle(fresh).describe()
    # Again: the delivery that ran is never started a second time.
    assert (await _reap(temporal)).started == 0
    await asyncio.sleep(1.0)
    assert len(receiver.at(path)) == 1


async def test_the_worker_keeps_the_reaper_schedule(wh_stack: RunningStack) -> None:
    temporal = await wh_stack.temporal_client()
    described = await temporal.get_schedule_handle(WEBHOOK_REAPER_SCHEDULE_ID).describe()
    schedule = described.schedule
    assert [i.every for i in schedule.spec.intervals] == [timedelta(seconds=300)]
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    assert schedule.action.workflow == "WebhookReaperWorkflow"
