"""The burst step of `make bench`: does the stack answer a burst promptly, refusing what it
cannot take at once, rather than queueing every request until the answers come too late?

On a stack of its own, started fresh: the create + charge capacity is measured closed loop
(as in the main steps), then customers arrive open loop (each arrival due at its time, however
the earlier ones fare), evenly spaced, each doing a signed create + charge with 4242:
  calm   `--calm-share` (0.4) × capacity a second for 15 s,
  burst  `--burst-factor` (3) × capacity a second for 20 s,
  after  the calm rate again for 20 s (`--burst-phases 15,20,20`).
Every request is sent as a careful client sends it: with an Idempotency-Key, retried with the
same key after `Retry-After` (1 s when the answer names none) when refused (429, 503) or told
the key's first request is still running (409), after 1 s on a connection error, for at most
two minutes in all; a request unanswered after 30 s is a client timeout, and the arrival ends
there (a failure).

Then it waits (at most two minutes) until no intent is `processing` and no transaction pending,
and runs the chaos test's audit (tests/ledger_audit.py: our database against the simulator's
ledger, reference by reference; every count must be 0). It prints, per phase, the answers
(first ones, every attempt, how each arrival ended), p50/p99 of the refusals (time to the
429/503) and of the accepted charges, how long after the burst's end latency was back to calm
(bench/burst_report.py says how each is defined), and the verdicts against the targets.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.serve import KEEP_ALIVE_SECONDS
from bench.burst_report import (
    ACCEPTED_CHARGE,
    CONNECTION_ERROR,
    RECOVERY_FACTOR,
    RECOVERY_WINDOW_SECONDS,
    TIMEOUT,
    Arrival,
    Attempt,
    Phase,
    PhaseSummary,
    Verdict,
    arrival_schedule,
    percentile,
    phase_at,
    phase_starts,
    recovery_seconds,
    served_window_p50s,
    summarize,
    verdicts,
    window_p50s,
)
from bench.measurement import Measurement, verdict
from bench.operations import CARD, INTENT, create_merchant
from bench.statements import shorten
from client import DurapayClient
from core.loop_lag import watch_loop_lag
from tests.ledger_audit import Audit, audit_against_ledger, count_unsettled
from tests.stack import RunningStack

CLIENT_TIMEOUT_SECONDS = 30.0
PATIENCE_SECONDS = 120.0  # a careful client's retries of one request, all of them
RETRY_AFTER_WHEN_UNNAMED = 1.0  # uvicorn's own 503 past its connection limit names no delay
CONNECTION_RETRY_SECONDS = 1.0
SETTLE_TIMEOUT_SECONDS = 120.0
# 409 codes that mean "the first request with this key is still running: ask again".
IN_PROGRESS_CODES = frozenset({"attempt_in_flight", "idempotency_key_in_use"})
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
# Arrivals are spread over this many HTTP clients, none with a pool limit (a request waiting
# for one of our own connections would be queueing we measure as the server's). One client
# holding every connection costs the load generator more CPU per request the more it holds
# (httpcore's pool scans its connections and waiting requests on every request), until its
# own overhead is what the burst measures.
CLIENT_SHARDS = 64
# Below the API's own idle keep-alive timeout: a connection the server closes just as the
# client reuses it is a connection error neither side caused.
CLIENT_KEEPALIVE_SECONDS = KEEP_ALIVE_SECONDS / 2


@dataclass(frozen=True)
class BurstOptions:
    calm_seconds: float = 15.0
    burst_seconds: float = 20.0
    after_seconds: float = 20.0
    calm_share: float = 0.4  # of the measured capacity
    factor: float = 3.0  # the burst's rate, × the measured capacity

    def phases(self, capacity: float) -> list[Phase]:
        calm = self.calm_share * capacity
        return [
            Phase("calm", self.calm_seconds, calm),
            Phase("burst", self.burst_seconds, self.factor * capacity),
            Phase("after", self.after_seconds, calm),
        ]


@dataclass
class BurstRun:
    capacity: Measurement
    phases: list[Phase]
    arrivals: list[Arrival]
    scheduler_lag: float  # the latest any arrival was sent after it was due
    settle_seconds: float | None  # None: still unsettled after SETTLE_TIMEOUT_SECONDS
    audit: Audit
    accepted_statuses: Counter[str]  # of the intents whose charge was accepted
    refusal_kinds: Counter[str]
    loop_lag: list[tuple[float, float]]  # the load generator's (seconds since start, lag)
    api_loop_lag: list[LoopLagBuckets]  # the API's, scraped at the start and each phase's end


class CarefulClient:
    """Sends one arrival's requests as a careful merchant integration would."""

    def __init__(
        self,
        durapay: DurapayClient,
        started: float,
        *,
        timeout: float = CLIENT_TIMEOUT_SECONDS,
        patience: float = PATIENCE_SECONDS,
    ) -> None:
        self.durapay = durapay
        self.started = started
        self.timeout = timeout
        self.patience = patience
        # Which refusals came back: a 503 of the API's in-flight limit, of a dependency it
        # could not reach in time, or the HTTP server's own plain one past its connections.
        self.refusal_kinds: Counter[str] = Counter()

    def now(self) -> float:
        return time.monotonic() - self.started

    async def arrive(self, arrival: Arrival, key: str) -> None:
        response = await self.send(arrival, "create", "/payment-intents", INTENT, f"{key}-c")
        if response is None:
            return
        if response.status_code != 201:
            arrival.outcome = f"create {answer_label(response)}"
            return
        arrival.intent_id = str(response.json()["id"])
        response = await self.send(
            arrival,
            "charge",
            f"/payment-intents/{arrival.intent_id}/transactions",
            {"type": "charge", "card": CARD},
            f"{key}-t",
        )
        if response is not None:
            status = answer_label(response)
            arrival.outcome = status if status in ACCEPTED_CHARGE else f"charge {status}"

    async def send(
        self, arrival: Arrival, request: str, path: str, body: dict[str, Any], key: str
    ) -> httpx.Response | None:
        """The final answer, or None when the arrival ended without one (a client timeout,
        or retries past its patience): then its outcome says which."""
        deadline = self.now() + self.patience
        while True:
            sent = self.now()
            try:
                async with asyncio.timeout(self.timeout):
                    response = await self.durapay.post(path, body, idempotency_key=key)
            except (TimeoutError, httpx.TimeoutException):
                arrival.attempts.append(Attempt(request, sent, self.now() - sent, TIMEOUT))
                arrival.outcome = f"{request} {TIMEOUT}"
                return None
            except httpx.TransportError:
                arrival.attempts.append(Attempt(request, sent, self.now() - sent, CONNECTION_ERROR))
                wait = CONNECTION_RETRY_SECONDS
            else:
                arrival.attempts.append(
                    Attempt(request, sent, self.now() - sent, answer_label(response))
                )
                if response.status_code in (429, 503):
                    self.refusal_kinds[refusal_kind(response)] += 1
                if not retried(response):
                    return response
                wait = retry_after(response)
            if self.now() + wait > deadline:
                arrival.outcome = f"{request} gave up"
                return None
            await asyncio.sleep(wait)


def answer_label(response: httpx.Response) -> str:
    if response.status_code == 409:
        return f"409 {error_code(response)}"
    return str(response.status_code)


def refusal_kind(response: httpx.Response) -> str:
    """`503 "Durapay is answering as many requests…"`: the status and the start of the error's
    message (the API's error codes do not tell an overload from an outage)."""
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = f"(body: {response.text[:40].strip()})"
    retry = "" if "retry-after" in response.headers else ", no Retry-After"
    return f'{response.status_code} "{shorten(message, 60)}"{retry}'


def error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


def retried(response: httpx.Response) -> bool:
    return response.status_code in RETRIED_STATUSES or (
        response.status_code == 409 and error_code(response) in IN_PROGRESS_CODES
    )


def retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return RETRY_AFTER_WHEN_UNNAMED


class LoopLag:
    """How late the load generator's own event loop runs: every `TICK_SECONDS` it notes how
    much later than asked a sleep ended (core/loop_lag.py, as the API and workers measure
    theirs). Every latency the burst reports includes this lag, so it says how far the figures
    are the client's rather than the stack's."""

    TICK_SECONDS = 0.01

    def __init__(self, started: float) -> None:
        self.started = started
        self.samples: list[tuple[float, float]] = []  # (seconds since the start, lag)

    def observe(self, lag: float) -> None:
        self.samples.append((time.monotonic() - self.started, lag))

    async def watch(self) -> None:
        await watch_loop_lag(self.observe, self.TICK_SECONDS)


LoopLagBuckets = dict[float, float]  # the API's lag histogram: upper bound → cumulative count


async def api_loop_lag(stack: RunningStack) -> LoopLagBuckets:
    """The API process's `durapay_event_loop_lag_seconds` buckets as they stand."""
    async with httpx.AsyncClient(
        base_url=stack.api_url, timeout=10, headers={"Authorization": f"Bearer {stack.admin_token}"}
    ) as http:
        response = await http.get("/metrics")
    response.raise_for_status()
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "durapay_event_loop_lag_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }


def lag_bound(
    before: LoopLagBuckets, after: LoopLagBuckets, share: float = 0.99
) -> tuple[float, int]:
    """The smallest bucket bound holding `share` of the samples taken between the two scrapes,
    and how many there were."""
    deltas = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = deltas[-1][1] if deltas else 0.0
    for bound, count in deltas:
        if count >= share * total:
            return bound, int(total)
    return math.inf, int(total)


async def scrape_at_phase_ends(
    stack: RunningStack, started: float, phases: Sequence[Phase]
) -> list[LoopLagBuckets]:
    """The API's loop-lag buckets at the start and at the end of every phase."""
    snapshots = [await api_loop_lag(stack)]
    for start, phase in zip(phase_starts(phases), phases, strict=True):
        await asyncio.sleep(max(0.0, started + start + phase.seconds - time.monotonic()))
        snapshots.append(await api_loop_lag(stack))
    return snapshots


async def send_arrivals(
    stack: RunningStack, phases: Sequence[Phase]
) -> tuple[list[Arrival], float, Counter[str], list[tuple[float, float]], list[LoopLagBuckets]]:
    """Every arrival of the schedule, each sent when due; returns them once all ended, with
    the latest any was sent after it was due (the load generator's own lag) and the kinds of
    refusal answered."""
    merchant = await create_merchant(stack, "Bench burst")
    run = uuid.uuid4().hex[:8]
    arrivals: list[Arrival] = []
    tasks: list[asyncio.Task[None]] = []
    lag = 0.0
    async with AsyncExitStack() as exits:
        started = time.monotonic()
        loop_lag = LoopLag(started)
        watcher = asyncio.create_task(loop_lag.watch())
        api_lag = asyncio.create_task(scrape_at_phase_ends(stack, started, phases))
        clients = [
            CarefulClient(
                await exits.enter_async_context(
                    DurapayClient(
                        stack.api_url,
                        merchant["publicKey"],
                        merchant["secretKey"],
                        timeout=2 * CLIENT_TIMEOUT_SECONDS,
                        transport=httpx.AsyncHTTPTransport(
                            limits=httpx.Limits(
                                max_connections=None,
                                max_keepalive_connections=8,
                                keepalive_expiry=CLIENT_KEEPALIVE_SECONDS,
                            )
                        ),
                    )
                ),
                started,
            )
            for _ in range(CLIENT_SHARDS)
        ]
        for index, (due, phase) in enumerate(arrival_schedule(phases)):
            delay = started + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, time.monotonic() - started - due)
            arrival = Arrival(due, phase)
            arrivals.append(arrival)
            client = clients[index % CLIENT_SHARDS]
            tasks.append(asyncio.create_task(client.arrive(arrival, f"burst-{run}-{index}")))
        await asyncio.gather(*tasks)
        watcher.cancel()
        api_lag_snapshots = await api_lag
    return (
        arrivals,
        lag,
        sum((c.refusal_kinds for c in clients), Counter()),
        loop_lag.samples,
        api_lag_snapshots,
    )


async def settle_and_audit(
    stack: RunningStack, accepted: Sequence[str]
) -> tuple[float | None, Audit, Counter[str]]:
    """Seconds until nothing is unsettled (None if not within SETTLE_TIMEOUT_SECONDS), the
    audit against the simulator's ledger, and the accepted intents' statuses."""
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        started = time.monotonic()
        settle: float | None = None
        while time.monotonic() - started < SETTLE_TIMEOUT_SECONDS:
            if await count_unsettled(pool) == (0, 0):
                settle = time.monotonic() - started
                break
            await asyncio.sleep(0.5)
        rows = await pool.fetch(
            "SELECT status, count(*) AS n FROM payment_intent "
            "WHERE id = ANY($1::text[]) GROUP BY status",
            list(accepted),
        )
        statuses = Counter({str(row["status"]): int(row["n"]) for row in rows})
        async with httpx.AsyncClient(base_url=stack.cardnet_url, timeout=60) as cardnet:
            audit = await audit_against_ledger(pool, cardnet)
    finally:
        await pool.close()
    return settle, audit, statuses


async def run_burst(stack: RunningStack, capacity: Measurement, options: BurstOptions) -> BurstRun:
    phases = options.phases(capacity.per_second)
    print(f"\nburst: {describe(phases)}; open loop, evenly spaced arrivals", flush=True)
    arrivals, lag, refusal_kinds, loop_lag, api_lag = await send_arrivals(stack, phases)
    accepted = [a.intent_id for a in arrivals if a.accepted and a.intent_id]
    settle, audit, statuses = await settle_and_audit(stack, accepted)
    return BurstRun(
        capacity, phases, arrivals, lag, settle, audit, statuses, refusal_kinds, loop_lag, api_lag
    )


def describe(phases: Sequence[Phase]) -> str:
    return ", ".join(f"{p.name} {p.rate:.1f}/s for {p.seconds:g} s" for p in phases)


# ---- the report ----------------------------------------------------------------------------


def print_burst(run: BurstRun) -> None:
    summaries = summarize(run.arrivals, run.phases)
    starts = phase_starts(run.phases)
    burst_end = starts[1] + run.phases[1].seconds
    after_end = burst_end + run.phases[2].seconds
    calm_p50 = percentile(summaries[0].served, 0.5)
    windows = served_window_p50s(run.arrivals, burst_end, after_end)
    recovery = recovery_seconds(windows, burst_end, calm_p50)
    calm_end_to_end_p50 = percentile(summaries[0].end_to_end, 0.5)
    end_to_end_windows = window_p50s(run.arrivals, burst_end, after_end)
    end_to_end_recovery = recovery_seconds(end_to_end_windows, burst_end, calm_end_to_end_p50)
    settled = run.settle_seconds is not None and set(run.accepted_statuses) <= {"succeeded"}
    print(
        f"\nburst at {run.phases[1].rate / run.capacity.per_second:g}× the create + charge "
        f"capacity ({run.capacity.per_second:.1f}/s, measured closed loop on this stack): "
        f"{describe(run.phases)}"
    )
    print(
        f"  arrivals open loop, evenly spaced; the load generator sent each at most "
        f"{run.scheduler_lag * 1000:.0f} ms after it was due; client timeout "
        f"{CLIENT_TIMEOUT_SECONDS:g} s; refused requests retried with their Idempotency-Key "
        "after Retry-After"
    )
    for index, summary in enumerate(summaries):
        print_phase(summary)
        lags = [lag for at, lag in run.loop_lag if phase_at(at, run.phases) == index]
        print(
            f"    load generator's loop lag  {p50_p99(lags)}, max "
            f"{max(lags, default=0.0) * 1000:.0f} ms   (in every latency above)"
        )
        if len(run.api_loop_lag) > index + 1:
            before, after = run.api_loop_lag[index], run.api_loop_lag[index + 1]
            p99, samples = lag_bound(before, after)
            most, _ = lag_bound(before, after, share=1.0)
            print(
                f"    API process's loop lag     p99 ≤ {p99 * 1000:g} ms, max ≤ "
                f"{most * 1000:g} ms   ({samples} samples of durapay_event_loop_lag_seconds)"
            )
    print(
        "  back to calm after the burst's end: "
        + ("not within the after phase" if recovery is None else f"{recovery:.1f} s")
        + f"   ({RECOVERY_WINDOW_SECONDS:g} s windows by when the accepted charge was sent; "
        f"calm once every later window's served p50 is within {RECOVERY_FACTOR:g}× the calm "
        f"p50, {calm_p50 * 1000:.0f} ms)"
    )
    print(
        "  served p50 per window after the burst (ms): "
        + " ".join(f"{p50 * 1000:.0f}" for _, p50 in windows)
    )
    print(
        "  end to end, arrivals due after the burst: "
        + (
            "not calm within the after phase"
            if end_to_end_recovery is None
            else f"calm {end_to_end_recovery:.1f} s after its end"
        )
        + f"   (calm p50 {calm_end_to_end_p50 * 1000:.0f} ms; refused arrivals of the burst "
        "still retrying share the stack with them until that backlog is served)"
    )
    print(
        "  end-to-end p50 per window after the burst (ms): "
        + " ".join("-" if math.isinf(p50) else f"{p50 * 1000:.0f}" for _, p50 in end_to_end_windows)
    )
    settle = (
        f"NOT within {SETTLE_TIMEOUT_SECONDS:g} s"
        if run.settle_seconds is None
        else f"{run.settle_seconds:.1f} s after the last arrival ended"
    )
    print(
        f"  settled: {settle}; accepted intents by status: "
        f"{sorted_counts(run.accepted_statuses) or 'none'}"
    )
    for kind, count in run.refusal_kinds.most_common():
        print(f"  refusals {count:5d} × {kind}")
    print("  chaos audit: " + " ".join(f"{name}={n}" for name, n in run.audit.counts.items()))
    print("  verdicts")
    for line in verdicts(summaries, recovery, settled, run.audit.counts):
        print_verdict(line)


def print_phase(summary: PhaseSummary) -> None:
    phase = summary.phase
    print(
        f"  {phase.name} ({phase.rate:.1f}/s for {phase.seconds:g} s): {summary.arrivals} arrivals"
    )
    for request, counts in summary.first_answers.items():
        print(f"    first answers, {request:<6}  {sorted_counts(counts) or '-'}")
    print(f"    every attempt sent      {sorted_counts(summary.answers) or '-'}")
    print(f"    how arrivals ended      {sorted_counts(summary.outcomes) or '-'}")
    print(
        f"    refusals                {len(summary.refusals)}, answered after "
        f"{p50_p99(summary.refusals)}"
    )
    print(
        f"    accepted (served)       {p50_p99(summary.served)}   (the accepted create and "
        "charge requests' own answer times)"
    )
    print(
        f"    accepted (end to end)   {p50_p99(summary.end_to_end)}   (due → the charge's "
        "first 200/202, refusals and waits included)"
    )
    print(f"    connection errors {summary.connection_errors}   client timeouts {summary.timeouts}")


def p50_p99(seconds: Sequence[float]) -> str:
    if not seconds:
        return "-"
    return (
        f"p50 {percentile(seconds, 0.5) * 1000:.0f} ms / "
        f"p99 {percentile(seconds, 0.99) * 1000:.0f} ms"
    )


def sorted_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{n} × {name}" for name, n in counts.most_common())


def print_verdict(line: Verdict) -> None:
    print(f"    {line.name:<58} {line.measured:<44} {verdict(line.ok)}")
