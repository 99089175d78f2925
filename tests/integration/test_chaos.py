"""Chaos, "the proof": every operation of a payment (charges, captures, voids, refunds) under a
merchant's closed-loop load, with the card network misbehaving at random (bad-day faults
included) while every process of the stack is SIGKILLed once: a worker, the API, the simulator,
Postgres and the Temporal server. Once the faults stop and everything settles, our database
and the network's ledger must agree exactly: nobody charged twice, no success lost or invented,
no amount off, nothing stuck, no network operation we do not know about, no capture or refund
there that we did not ask for, no refund twice. And what the merchant's own systems received
must be whole: its webhook endpoint (up throughout) got every payment event, none planned twice;
the WAL-fed event stream (`durapay events stream`, restarted whenever it stops) holds every
event row; `durapay audit verify` passes over the whole database.

Runs on its own stack (two workers) so the kills disturb no other test. Reproduce a run with
`DURAPAY_CHAOS_SEED=<seed>`; size it with `DURAPAY_CHAOS_INTENTS=<n>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from client import DurapayClient
from core.webhooks import PAYMENT_EVENT_TYPES
from tests.integration.chaos_load import RETRY_BUDGET_SECONDS, Load, run_load
from tests.integration.helpers import FAST_TIMING_ENV, assert_eventually, own_stack, signed_merchant
from tests.integration.webhook_receiver import WebhookReceiver
from tests.ledger_audit import (
    Audit,
    audit_against_ledger,
    audit_verify_findings,
    count_unsettled,
    event_stream_findings,
    webhook_findings,
)
from tests.stack import RunningStack, process_alive, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SEED = int(os.environ.get("DURAPAY_CHAOS_SEED", "20261125"))
# About 60-90 s of load on a 2-core machine (the run is part of `make test`): ~60 s of work,
# plus the minute for which a request caught in the killed API holds its Idempotency-Key.
INTENTS = int(os.environ.get("DURAPAY_CHAOS_INTENTS", "100"))
CONCURRENCY = 20
# Every child of the stack, each SIGKILLed once, in this order, spaced over the load.
KILLED_CHILDREN = ("worker-1", "api", "cardnet", "postgres", "temporal")
RESTART_TIMEOUT_SECONDS = 90.0
SETTLE_TIMEOUT_SECONDS = 180.0
FINDINGS_SHOWN = 5  # per kind, in the printed block
# Each fault fires a dozen times or more over the run's ~500 network requests, yet 4 refusals
# in a row (which fail an approving card as processing_error) stay unlikely (0.1^4). The status
# lag is far below the age at which the workflow believes a `not_found` (15 min), so it delays
# settling without deciding it.
FAULTS = {
    "latencyMs": 400,
    "latencyRate": 0.2,
    "errorRate": 0.1,
    "dropRate": 0.05,
    "holdRate": 0.04,
    "commitThenErrorRate": 0.03,
    "garbageRate": 0.03,
    "trickleRate": 0.03,
    "statusLagMs": 2000,
    "seed": SEED,
}
# Webhooks retried within seconds, and a delivery whose start was lost with a killed API
# process found by the reaper within seconds too, so every event reaches the receiver soon
# after the load.
CHAOS_WEBHOOK_ENV = {
    "DURAPAY_WEBHOOK_FIRST_DELAY_SECONDS": "1",
    "DURAPAY_WEBHOOK_BACKOFF_FACTOR": "2",
    "DURAPAY_WEBHOOK_MAX_DELAY_SECONDS": "8",
    "DURAPAY_WEBHOOK_REAPER_INTERVAL_SECONDS": "5",
    "DURAPAY_WEBHOOK_REAPER_GRACE_SECONDS": "10",
}
RECEIVER_PATH = "/chaos"
DELIVERED_TIMEOUT_SECONDS = 120.0
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(
        tmp_path_factory, "chaos", workers=2, extra_env={**FAST_TIMING_ENV, **CHAOS_WEBHOOK_ENV}
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def chaos_merchant(chaos_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(chaos_stack, "Chaos Merchant") as client:
        yield client


@dataclass
class Kill:
    child: str
    old_pid: int
    new_pid: int
    at_seconds: float  # into the load
    back_after_seconds: float
    intents_done: int
    during_load: bool

    def __str__(self) -> str:
        when = (
            f"at {self.at_seconds:.0f}s ({self.intents_done}/{INTENTS} intents done)"
            if self.during_load
            else "AFTER the load"
        )
        return (
            f"{self.child} {when}, pid {self.old_pid}->{self.new_pid} back in "
            f"{self.back_after_seconds:.1f}s"
        )


async def test_chaos_run_settles_with_ledger_and_database_in_agreement(
    chaos_stack: RunningStack,
    chaos_merchant: DurapayClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with (
        WebhookReceiver() as receiver,
        EventStream(chaos_stack, tmp_path / "stream.jsonl") as stream,
    ):
        await _subscribe(chaos_merchant, receiver)
        await stream.started()
        async with httpx.AsyncClient(base_url=chaos_stack.cardnet_url, timeout=30) as cardnet:
            await _turn_faults_on(cardnet)
            load = Load()
            started = time.monotonic()
            merchant = asyncio.create_task(
                run_load(
                    chaos_merchant, seed=SEED, intents=INTENTS, concurrency=CONCURRENCY, load=load
                )
            )
            try:
                kills = await _kill_each_child_during_load(chaos_stack, cardnet, load, merchant)
                await merchant
            finally:
                if not merchant.done():  # a kill went wrong: stop the merchant before failing
                    merchant.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await merchant
            load_seconds = time.monotonic() - started
            response = await cardnet.delete("/faults")
            assert response.status_code == 200, response.text

            pool = await asyncpg.create_pool(chaos_stack.database_url, min_size=1, max_size=2)
            try:
                settle_seconds = await _wait_until_settled(pool)
                audit = await audit_against_ledger(pool, cardnet)
                audit.findings.update(await _webhooks_delivered(pool, receiver))
                audit.findings.update(await _events_streamed(pool, stream))
                seen = (
                    len(await _payment_events(pool)),
                    len(receiver.at(RECEIVER_PATH)),
                    len(stream.event_ids()),
                )
            finally:
                await pool.close()
    audit.findings.update(_audit_verified(chaos_stack))
    audit.counts = {name: len(found) for name, found in audit.findings.items()}

    with capsys.disabled():
        print(
            _report(load, kills, audit, load_seconds, settle_seconds)
            + f"\n  payment events={seen[0]} webhook requests={seen[1]} streamed={seen[2]} "
            f"(the stream's consumer started {stream.starts} times)"
        )
    problems = _problems(chaos_stack, load, kills, audit, settle_seconds)
    assert not problems, "; ".join(problems) + f" (logs under {chaos_stack.home / 'logs'})"


# ---- what the merchant's systems receive: webhooks, the event stream, the audit trail ---------
async def _subscribe(merchant: DurapayClient, receiver: WebhookReceiver) -> None:
    response = await merchant.post(
        "/webhook-endpoints", {"url": receiver.url(RECEIVER_PATH), "enabledEvents": ["*"]}
    )
    assert response.status_code == 201, response.text


async def _payment_events(pool: asyncpg.Pool) -> list[str]:
    """The run's payment events (its one merchant's), oldest first."""
    rows = await pool.fetch(
        "SELECT id FROM event WHERE type = ANY($1::text[]) ORDER BY seq", list(PAYMENT_EVENT_TYPES)
    )
    return [row["id"] for row in rows]


async def _webhooks_delivered(
    pool: asyncpg.Pool, receiver: WebhookReceiver
) -> dict[str, list[str]]:
    """Waits (bounded) for every event's delivery to end, then judges what was received."""

    async def findings() -> dict[str, list[str]] | None:
        deliveries = await pool.fetch("SELECT event_id, status FROM webhook_delivery")
        found = webhook_findings(
            await _payment_events(pool),
            [(d["event_id"], d["status"]) for d in deliveries],
            [r.headers.get("webhook-id", "") for r in receiver.at(RECEIVER_PATH)],
        )
        return None if any(found.values()) else found

    try:
        return await assert_eventually(findings, timeout=DELIVERED_TIMEOUT_SECONDS, interval=1.0)
    except AssertionError:
        deliveries = await pool.fetch("SELECT event_id, status FROM webhook_delivery")
        return webhook_findings(
            await _payment_events(pool),
            [(d["event_id"], d["status"]) for d in deliveries],
            [r.headers.get("webhook-id", "") for r in receiver.at(RECEIVER_PATH)],
        )


async def _events_streamed(pool: asyncpg.Pool, stream: EventStream) -> dict[str, list[str]]:
    async def findings() -> dict[str, list[str]] | None:
        found = event_stream_findings(await _payment_events(pool), stream.event_ids())
        return None if any(found.values()) else found

    try:
        return await assert_eventually(findings, timeout=DELIVERED_TIMEOUT_SECONDS, interval=1.0)
    except AssertionError:
        return event_stream_findings(await _payment_events(pool), stream.event_ids())


def _audit_verified(stack: RunningStack) -> dict[str, list[str]]:
    result = subprocess.run(
        [str(BIN / "durapay"), "audit", "verify"],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return audit_verify_findings(result.returncode, result.stdout + result.stderr)


class EventStream:
    """`durapay events stream` into a file sink on a slot of its own, restarted (resuming from
    its sink's cursor) whenever it stops: a Postgres kill may end it. Stopped, and its slot
    dropped, at the end of the block."""

    def __init__(self, stack: RunningStack, sink: Path) -> None:
        self.stack = stack
        self.sink = sink
        self.slot = f"chaos_{uuid.uuid4().hex[:12]}"
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_: object) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._process is not None:
            stop_process(self._process)
        subprocess.run(
            [str(BIN / "durapay"), "events", "drop-slot", "--slot", self.slot],
            env=self.stack.env,
            capture_output=True,
            timeout=60,
            check=False,
        )

    async def started(self) -> None:
        """Running, its slot created (events committed from now on are streamed), and kept
        running from now on."""
        self._ensure_running()

        async def slot_exists() -> bool:
            connection = await asyncpg.connect(self.stack.database_url)
            try:
                return bool(
                    await connection.fetchval(
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", self.slot
                    )
                )
            finally:
                await connection.close()

        await assert_eventually(slot_exists, timeout=60, message="the event stream's slot")
        self._supervisor = asyncio.create_task(self._keep_running())

    def event_ids(self) -> list[str]:
        if not self.sink.exists():
            return []
        return [
            json.loads(line)["id"] for line in self.sink.read_text().splitlines() if line.strip()
        ]

    async def _keep_running(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._ensure_running()

    def _ensure_running(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.starts += 1
        log = self.stack.home / "logs" / "events-stream.log"
        with open(log, "ab") as output:
            self._process = subprocess.Popen(
                [
                    str(BIN / "durapay"),
                    "events",
                    "stream",
                    "--slot",
                    self.slot,
                    "--sink",
                    f"file:{self.sink}",
                ],
                env=self.stack.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )


# ---- the network's bad day ---------------------------------------------------------------------
async def _turn_faults_on(cardnet: httpx.AsyncClient) -> None:
    """The simulator keeps its faults in memory only: set again after it is restarted."""
    response = await cardnet.post("/faults", json=FAULTS)
    assert response.status_code == 200, f"the simulator refused the faults: {response.text}"


# ---- the chaos monkey --------------------------------------------------------------------------
async def _kill_each_child_during_load(
    stack: RunningStack, cardnet: httpx.AsyncClient, load: Load, merchant: asyncio.Task[None]
) -> list[Kill]:
    """SIGKILL each of KILLED_CHILDREN once, evenly spread over the intents, each time with
    the pid read afresh from stack.json; the next kill waits until the last child is back."""
    kills: list[Kill] = []
    started = time.monotonic()
    for number, child in enumerate(KILLED_CHILDREN, start=1):
        threshold = INTENTS * number // (len(KILLED_CHILDREN) + 1)

        async def progressed(at_least: int = threshold) -> bool:
            return load.intents_done >= at_least or merchant.done()

        await assert_eventually(progressed, timeout=300, interval=0.2)
        old_pid = _child_pid(stack, child)
        killed_at = time.monotonic()
        during_load = not merchant.done()
        os.kill(old_pid, signal.SIGKILL)
        new_pid = await assert_eventually(
            functools.partial(_back, stack, child, old_pid),
            timeout=RESTART_TIMEOUT_SECONDS,
            interval=0.2,
            message=f"{child} (pid {old_pid}) was not restarted",
        )
        if child == "cardnet":
            await _turn_faults_on(cardnet)
        kills.append(
            Kill(
                child,
                old_pid,
                new_pid,
                killed_at - started,
                time.monotonic() - killed_at,
                load.intents_done,
                during_load,
            )
        )
    return kills


def _child_pid(stack: RunningStack, name: str) -> int:
    children = stack.state()["children"]
    assert isinstance(children, dict)
    return int(children[name])


async def _back(stack: RunningStack, child: str, old_pid: int) -> int | None:
    """The child's new pid once the launcher restarted it and it answers; None before."""
    if stack.process.poll() is not None:
        tail = (stack.home / "launcher.out").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"the launcher stopped after {child} was killed:\n{tail}")
    try:
        pid = _child_pid(stack, child)
    except (json.JSONDecodeError, KeyError):  # stack.json is being rewritten
        return None
    if pid == old_pid or not process_alive(pid) or not await _answers(stack, child, pid):
        return None
    return pid


async def _answers(stack: RunningStack, child: str, pid: int) -> bool:
    try:
        if child.startswith("worker-"):  # it writes its pid once it polls its task queue
            return (stack.home / "run" / f"{child}.ready").read_text().strip() == str(pid)
        if child in ("api", "cardnet"):
            url = stack.api_url if child == "api" else stack.cardnet_url
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{url}/healthz")).status_code == 200
        if child == "postgres":
            connection = await asyncpg.connect(stack.database_url, timeout=2)
            await connection.close()
            return True
        if child == "temporal":
            temporal = await Client.connect(stack.temporal_address)
            await temporal.count_workflows()
            return True
    except Exception:  # noqa: BLE001 (any failure to answer means "not back yet")
        return False
    raise AssertionError(f"no health probe for {child}")


# ---- the verdict -------------------------------------------------------------------------------
async def _wait_until_settled(pool: asyncpg.Pool) -> float | None:
    """Seconds until no intent is processing and no transaction pending or timeout; None if
    that did not happen within SETTLE_TIMEOUT_SECONDS (the audit then counts what is stuck)."""
    started = time.monotonic()

    async def settled() -> bool:
        intents, transactions = await count_unsettled(pool)
        assert (intents, transactions) == (0, 0), (
            f"{intents} intents processing, {transactions} transactions pending or timeout"
        )
        return True

    try:
        await assert_eventually(settled, timeout=SETTLE_TIMEOUT_SECONDS, interval=1.0)
    except AssertionError:
        return None
    return time.monotonic() - started


def _report(
    load: Load, kills: list[Kill], audit: Audit, load_seconds: float, settle_seconds: float | None
) -> str:
    settle = (
        f"{settle_seconds:.1f}s"
        if settle_seconds is not None
        else f"NOT within {SETTLE_TIMEOUT_SECONDS:.0f}s"
    )
    finals = "; ".join(f"{op} {_sorted(counts)}" for op, counts in sorted(load.final.items()))
    lines = [
        f"chaos seed={SEED} intents={len(load.intent_ids)}/{INTENTS} "
        f"requests={sum(load.requests.values())} attempts={load.attempts} kills={len(kills)} "
        f"load={load_seconds:.1f}s (90% done by {load.seconds_until_done(0.9):.0f}s) "
        f"settle={settle}",
        "  " + " ".join(f"{name}={value}" for name, value in audit.counts.items()),
        f"  reconciled while the merchant polled: n={len(load.settle_waits)} "
        f"p50={_quantile(load.settle_waits, 0.5):.1f}s max={_quantile(load.settle_waits, 1):.1f}s",
        f"  http_500={len(load.defects)} unexpected_answers={len(load.unexpected)} "
        f"503_without_retry_after={load.unavailable_without_retry_after} "
        f"unsettled_for_merchant={load.still_processing_for_merchant}",
        f"  intent statuses: {_sorted(audit.intent_statuses)}",
        f"  transactions: {_sorted(audit.transaction_statuses)}; reconciled={audit.reconciled}; "
        f"ledger entries={audit.ledger_entries}",
        f"  answers (every attempt): {_sorted(load.answers)}",
        f"  last answer per request: {finals}",
        f"  kills: {'; '.join(str(k) for k in kills)}",
    ]
    shown = {
        **audit.findings,
        "http_500": load.defects,
        "unexpected_answers": load.unexpected,
        "merchant_gave_up": load.gave_up,
    }
    lines += [
        f"  ! {name}: {line}" for name, found in shown.items() for line in found[:FINDINGS_SHOWN]
    ]
    return "\n" + "\n".join(lines)


def _sorted(counts: Counter[str]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counts.items()))


def _problems(
    stack: RunningStack, load: Load, kills: list[Kill], audit: Audit, settle_seconds: float | None
) -> list[str]:
    problems = [f"{name}={value}" for name, value in audit.counts.items() if value]
    if load.defects:
        problems.append(f"{len(load.defects)} answers were 500 (a defect, never expected)")
    if load.unexpected:
        problems.append(f"{len(load.unexpected)} answers outside the contract")
    if load.gave_up:
        problems.append(
            f"{len(load.gave_up)} requests still said 'retry' after "
            f"{RETRY_BUDGET_SECONDS:.0f}s of retries"
        )
    if settle_seconds is None:
        problems.append(f"not settled {SETTLE_TIMEOUT_SECONDS:.0f}s after the load")
    if stack.process.poll() is not None:
        problems.append("the launcher gave up on a child")
    if [k.child for k in kills if k.during_load] != list(KILLED_CHILDREN):
        problems.append(
            f"killed {[str(k) for k in kills]} during the load, not each of {list(KILLED_CHILDREN)}"
        )
    chaos = load.answers["202"] and load.answers["402"] and audit.reconciled
    if not chaos or len(load.intent_ids) < INTENTS // 2:
        problems.append(
            "too little chaos: expected 202s, 402s, reconciled transactions and "
            "most intents created"
        )
    return problems


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
