"""bench/burst_report.py and bench/burst.py's client: the burst step's schedule, phases,
percentiles, recovery time and verdicts, and how a careful client retries."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import pytest

from bench.burst import (
    RETRY_AFTER_WHEN_UNNAMED,
    CarefulClient,
    lag_bound,
    refusal_kind,
    retry_after,
)
from bench.burst_report import (
    CONNECTION_ERROR,
    TIMEOUT,
    Arrival,
    Attempt,
    Phase,
    PhaseSummary,
    arrival_schedule,
    percentile,
    phase_at,
    recovery_seconds,
    served_window_p50s,
    summarize,
    verdicts,
    window_p50s,
)
from client import DurapayClient

PHASES = [Phase("calm", 2, 2.0), Phase("burst", 1, 4.0), Phase("after", 2, 2.0)]
CLEAN_AUDIT = {"double_charges": 0, "stuck": 0}


def accepted(at: float, phase: int, *, served: float = 0.2, waited: float = 0.0) -> Arrival:
    """An arrival refused once (after `waited` s, when given), then created and charged."""
    arrival = Arrival(at, phase)
    sent = at
    if waited:
        arrival.attempts.append(Attempt("create", sent, 0.01, "503"))
        sent += waited
    arrival.attempts += [
        Attempt("create", sent, served / 2, "201"),
        Attempt("charge", sent + served / 2, served / 2, "200"),
    ]
    arrival.outcome = "200"
    return arrival


def test_arrivals_are_evenly_spaced_within_each_phase() -> None:
    schedule = arrival_schedule(PHASES)
    assert schedule[:8] == [
        (0.0, 0),
        (0.5, 0),
        (1.0, 0),
        (1.5, 0),
        (2.0, 1),
        (2.25, 1),
        (2.5, 1),
        (2.75, 1),
    ]
    assert schedule[8:] == [(3.0, 2), (3.5, 2), (4.0, 2), (4.5, 2)]


def test_an_attempt_after_the_last_phase_belongs_to_the_last_phase() -> None:
    assert [phase_at(t, PHASES) for t in (0.0, 1.99, 2.0, 3.0, 4.99, 60.0)] == [0, 0, 1, 2, 2, 2]


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(100, 0, -1)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_end_to_end_counts_refusals_and_waits_and_served_does_not() -> None:
    arrival = accepted(1.0, 0, served=0.4, waited=1.0)
    assert arrival.end_to_end == pytest.approx(1.4)
    assert arrival.served == pytest.approx(0.4)


def test_an_arrival_never_accepted_is_infinitely_late_and_never_served() -> None:
    arrival = Arrival(1.0, 0, [Attempt("create", 1.0, 30.0, TIMEOUT)], "create timeout")
    assert math.isinf(arrival.end_to_end)
    assert arrival.served is None


def test_arrivals_count_in_the_phase_they_were_due_and_attempts_in_the_one_they_were_sent() -> None:
    late = Arrival(
        2.5,
        1,
        [
            Attempt("create", 2.5, 0.1, "201"),
            Attempt("charge", 2.6, 0.05, "503"),
            Attempt("charge", 3.6, 0.2, "202"),
        ],
        "202",
    )
    lost = Arrival(
        0.5,
        0,
        [Attempt("create", 0.5, 0.01, CONNECTION_ERROR), Attempt("create", 1.5, 30.0, TIMEOUT)],
        "create timeout",
    )
    calm, burst, after = summarize([accepted(0.0, 0), lost, late], PHASES)

    assert (calm.arrivals, burst.arrivals, after.arrivals) == (2, 1, 0)
    assert calm.first_answers["create"] == {"201": 1, CONNECTION_ERROR: 1}
    assert calm.outcomes == {"200": 1, "create timeout": 1}
    assert (calm.connection_errors, calm.timeouts) == (1, 1)
    assert burst.first_answers["charge"] == {"503": 1}
    assert burst.outcomes == {"202": 1}
    assert burst.end_to_end == [pytest.approx(1.3)]
    assert burst.served == [pytest.approx(0.3)]
    assert burst.refusals == [0.05]
    # The retry went out after the burst: the server's answer after the burst.
    assert after.answers == {"charge 202": 1}
    assert burst.answers == {"create 201": 1, "charge 503": 1}


def test_windows_group_arrivals_by_when_they_were_due_and_skip_empty_ones() -> None:
    never = Arrival(10.5, 2, [Attempt("create", 10.5, 0.1, "400")], "create 400")
    arrivals = [
        accepted(10.0, 2, served=0.1),
        accepted(10.2, 2, served=0.3),
        never,
        accepted(12.9, 2, served=0.2),
        accepted(9.9, 1, served=5.0),
        accepted(13.0, 2, served=5.0),
    ]
    windows = window_p50s(arrivals, 10.0, 13.0)
    assert windows == [(10.0, pytest.approx(0.3)), (12.0, pytest.approx(0.2))]


def test_served_windows_group_accepted_charges_by_when_they_were_sent() -> None:
    never = Arrival(10.5, 2, [Attempt("create", 10.5, 0.1, "400")], "create 400")
    # Due in the burst, refused for 2 s: its accepted charge is sent in the after phase.
    late = accepted(8.5, 1, served=0.4, waited=2.0)
    arrivals = [
        accepted(10.0, 2, served=0.1),
        accepted(10.2, 2, served=0.3),
        never,
        late,
        accepted(12.8, 2, served=0.2),
        accepted(7.0, 1, served=5.0),
        accepted(12.95, 2, served=5.0),
    ]  # its charge is sent at 13.45: after the end
    windows = served_window_p50s(arrivals, 10.0, 13.0)
    assert windows == [(10.0, pytest.approx(0.3)), (12.0, pytest.approx(0.2))]
    assert served_window_p50s([late], 10.0, 11.0) == [(10.0, pytest.approx(0.4))]


def test_recovery_is_when_every_later_window_is_calm() -> None:
    windows = [(35.0, 5.0), (36.0, 0.25), (37.0, 2.0), (38.0, 0.2), (39.0, 0.3)]
    assert recovery_seconds(windows, 35.0, calm_p50=0.2) == 3.0
    assert recovery_seconds(windows[3:], 35.0, calm_p50=0.2) == 3.0
    assert recovery_seconds([(35.0, 0.2), (36.0, 0.3)], 35.0, calm_p50=0.2) == 0.0
    assert recovery_seconds(windows[:3], 35.0, calm_p50=0.2) is None
    assert recovery_seconds([(35.0, math.inf)], 35.0, calm_p50=0.2) is None
    assert recovery_seconds([], 35.0, calm_p50=0.2) is None


def burst_summaries(
    *, burst_served: float = 0.2, refusal: float = 0.01, timeout: bool = False
) -> list[PhaseSummary]:
    arrivals = [
        accepted(0.0, 0, served=0.2),
        accepted(0.5, 0, served=0.2),
        accepted(2.0, 1, served=burst_served, waited=1.0),
        accepted(3.0, 2),
    ]
    arrivals[2].attempts[0].seconds = refusal
    if timeout:
        arrivals.append(Arrival(2.5, 1, [Attempt("create", 2.5, 30.0, TIMEOUT)], "create timeout"))
    return summarize(arrivals, PHASES)


def test_the_verdicts_pass_a_burst_answered_promptly() -> None:
    assert all(v.ok for v in verdicts(burst_summaries(), 0.0, True, CLEAN_AUDIT))


@pytest.mark.parametrize(
    ("summaries", "recovery", "settled", "audit", "failed"),
    [
        (burst_summaries(timeout=True), 0.0, True, CLEAN_AUDIT, 0),
        (burst_summaries(refusal=0.5), 0.0, True, CLEAN_AUDIT, 1),
        (burst_summaries(burst_served=0.7), 0.0, True, CLEAN_AUDIT, 2),
        (burst_summaries(), 5.5, True, CLEAN_AUDIT, 3),
        (burst_summaries(), None, True, CLEAN_AUDIT, 3),
        (burst_summaries(), 0.0, False, CLEAN_AUDIT, 4),
        (burst_summaries(), 0.0, True, {**CLEAN_AUDIT, "stuck": 1}, 4),
    ],
)
def test_each_verdict_fails_on_its_own_target(
    summaries: list[PhaseSummary],
    recovery: float | None,
    settled: bool,
    audit: dict[str, int],
    failed: int,
) -> None:
    results = verdicts(summaries, recovery, settled, audit)
    assert [n for n, v in enumerate(results) if not v.ok] == [failed]


# ---- the careful client ----------------------------------------------------------------------


def careful_client(
    handler: httpx.MockTransport, **limits: float
) -> tuple[CarefulClient, DurapayClient]:
    durapay = DurapayClient("http://durapay.test", "pk_test", "sk_test", transport=handler)
    return CarefulClient(durapay, time.monotonic(), **limits), durapay


async def test_a_refused_request_is_retried_with_its_key_after_retry_after() -> None:
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers["Idempotency-Key"]))
        if len(seen) == 1:
            return httpx.Response(
                503,
                headers={"Retry-After": "0"},
                json={"error": {"code": "service_unavailable", "message": "Busy; retry."}},
            )
        if request.url.path == "/payment-intents":
            return httpx.Response(201, json={"id": "pi_1"})
        return httpx.Response(200, json={"id": "pi_1", "status": "succeeded"})

    client, durapay = careful_client(httpx.MockTransport(answer))
    arrival = Arrival(0.0, 0)
    async with durapay:
        await asyncio.wait_for(client.arrive(arrival, "k1"), 5)

    assert seen == [("/payment-intents", "k1-c")] * 2 + [
        ("/payment-intents/pi_1/transactions", "k1-t")
    ]
    assert [(a.request, a.answer) for a in arrival.attempts] == [
        ("create", "503"),
        ("create", "201"),
        ("charge", "200"),
    ]
    assert (arrival.outcome, arrival.intent_id) == ("200", "pi_1")
    assert client.refusal_kinds == {'503 "Busy; retry."': 1}


def test_a_refusal_is_told_apart_by_its_message_and_its_retry_after() -> None:
    plain = httpx.Response(503, text="Service Unavailable")  # the HTTP server's own
    assert refusal_kind(plain) == '503 "(body: Service Unavailable)", no Retry-After'
    assert retry_after(plain) == RETRY_AFTER_WHEN_UNNAMED
    limited = httpx.Response(
        429,
        headers={"Retry-After": "3"},
        json={"error": {"code": "rate_limit_exceeded", "message": "Too many requests."}},
    )
    assert refusal_kind(limited) == '429 "Too many requests."'
    assert retry_after(limited) == 3.0


async def test_a_client_timeout_ends_the_arrival_as_a_failure() -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(1.0)
        return httpx.Response(201, json={"id": "pi_1"})

    client, durapay = careful_client(httpx.MockTransport(answer), timeout=0.05)
    arrival = Arrival(0.0, 0)
    async with durapay:
        await asyncio.wait_for(client.arrive(arrival, "k1"), 5)

    assert [(a.request, a.answer) for a in arrival.attempts] == [("create", TIMEOUT)]
    assert arrival.outcome == "create timeout" and not arrival.accepted


async def test_retries_past_the_patience_give_up() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            409, headers={"Retry-After": "1"}, json={"error": {"code": "idempotency_key_in_use"}}
        )

    client, durapay = careful_client(httpx.MockTransport(answer), patience=0.5)
    arrival = Arrival(0.0, 0)
    async with durapay:
        await asyncio.wait_for(client.arrive(arrival, "k1"), 5)

    assert [a.answer for a in arrival.attempts] == ["409 idempotency_key_in_use"]
    assert arrival.outcome == "create gave up"


async def test_a_decline_or_a_bad_request_is_final_not_retried() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/payment-intents":
            return httpx.Response(201, json={"id": "pi_1"})
        return httpx.Response(402, json={"error": {"code": "card_declined"}})

    client, durapay = careful_client(httpx.MockTransport(answer))
    arrival = Arrival(0.0, 0)
    async with durapay:
        await asyncio.wait_for(client.arrive(arrival, "k1"), 5)

    assert [a.answer for a in arrival.attempts] == ["201", "402"]
    assert arrival.outcome == "charge 402" and not arrival.accepted


def test_the_api_lag_p99_is_the_bucket_holding_99_percent_of_the_samples_between_scrapes() -> None:
    before = {0.01: 90.0, 0.1: 100.0, 1.0: 100.0, math.inf: 100.0}
    # 200 new samples: 150 ≤ 10 ms, 48 more ≤ 100 ms, 2 more ≤ 1 s.
    after = {0.01: 240.0, 0.1: 288.0, 1.0: 300.0, math.inf: 300.0}
    assert lag_bound(before, after) == (1.0, 200)
    after[0.1] = 299.0  # only one above 100 ms: 99.5 % within it
    assert lag_bound(before, after) == (0.1, 200)
    assert lag_bound(before, after, share=1.0) == (1.0, 200)
    assert lag_bound({}, {}) == (math.inf, 0)
