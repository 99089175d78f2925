"""The API's adaptive concurrency limit (api/concurrency_limit.py): pure logic, a made-up clock."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from statistics import median

import pytest

from api.concurrency_limit import (
    INITIAL_LIMIT,
    MAX_RETRY_AFTER_SECONDS,
    WINDOW_SAMPLES,
    AdaptiveConcurrencyLimit,
)

CHARGE = "POST /payment-intents/{id}/transactions"
RETRIEVE = "GET /payment-intents/{id}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def answer(
    limit: AdaptiveConcurrencyLimit,
    clock: Clock,
    route: str,
    seconds: float,
    *,
    concurrent: int = 1,
    batches: int = 1,
) -> None:
    """`batches` times: `concurrent` requests arrive together, those admitted are answered
    after `seconds` each (the clock moves on by that much per batch)."""
    for _ in range(batches):
        admitted = [limit.try_admit(clock.now) for _ in range(concurrent)]
        clock.now += seconds
        for admitted_with in admitted:
            if admitted_with is None:
                continue
            limit.release_with_sample(route, seconds, admitted_with=admitted_with, now=clock.now)


def keep_full(
    limit: AdaptiveConcurrencyLimit,
    clock: Clock,
    route: str,
    *,
    latency: Callable[[int], float],
    for_seconds: float,
) -> list[float]:
    """An overload: requests keep arriving, so every slot freed is taken at once; a request
    admitted as the n-th in flight is answered `latency(n)` later. The latencies answered."""
    pending: list[tuple[float, float, int]] = []  # (answered at, latency, admitted with)
    answered: list[float] = []
    until = clock.now + for_seconds
    while clock.now < until:
        while (admitted_with := limit.try_admit(clock.now)) is not None:
            seconds = latency(admitted_with + 1)
            heapq.heappush(pending, (clock.now + seconds, seconds, admitted_with))
        clock.now, seconds, admitted_with = heapq.heappop(pending)
        answered.append(seconds)
        limit.release_with_sample(route, seconds, admitted_with=admitted_with, now=clock.now)
    for _ in pending:
        limit.release()
    return answered


def queueing(calm: float, capacity: int) -> Callable[[int], float]:
    """A service that answers `capacity` requests at once at `calm` latency; more queue."""
    return lambda in_flight: calm * max(1.0, in_flight / capacity)


def fixed(seconds: float) -> Callable[[int], float]:
    return lambda _: seconds


def learn_calm(limit: AdaptiveConcurrencyLimit, clock: Clock, route: str, seconds: float) -> None:
    answer(limit, clock, route, seconds, batches=1 + 5 * WINDOW_SAMPLES)  # whole windows


def test_past_the_limit_a_request_is_refused_and_counted_until_one_ends() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    assert limit.current_limit == INITIAL_LIMIT
    admitted = [limit.try_admit(clock.now) for _ in range(INITIAL_LIMIT)]
    assert admitted == list(range(INITIAL_LIMIT))
    assert limit.try_admit(clock.now) is None
    assert (limit.refused, limit.in_flight) == (1, INITIAL_LIMIT)
    limit.release()
    assert limit.try_admit(clock.now) == INITIAL_LIMIT - 1


def test_a_limit_reached_at_calm_latency_grows() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    keep_full(limit, clock, CHARGE, latency=fixed(0.2), for_seconds=2)
    assert limit.current_limit > INITIAL_LIMIT


def test_a_limit_never_reached_does_not_grow() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    answer(limit, clock, CHARGE, 0.2, concurrent=4, batches=50)
    assert limit.current_limit == INITIAL_LIMIT


def test_answers_slower_than_the_tolerance_shrink_the_limit_down_to_the_minimum() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    answer(limit, clock, CHARGE, 0.6, concurrent=WINDOW_SAMPLES, batches=2)  # 3x calm
    assert INITIAL_LIMIT / 4 <= limit.current_limit <= INITIAL_LIMIT * 0.9
    keep_full(limit, clock, CHARGE, latency=fixed(5.0), for_seconds=10)
    assert limit.current_limit == 4


def test_answers_within_the_tolerance_do_not_shrink_it() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    answer(limit, clock, CHARGE, 0.35, concurrent=WINDOW_SAMPLES, batches=5)
    assert limit.current_limit >= INITIAL_LIMIT


def test_each_route_is_judged_against_its_own_calm_latency() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.3)
    learn_calm(limit, clock, RETRIEVE, 0.005)
    for _ in range(10):  # a mix: slow charges at their usual latency, quick reads at theirs
        answer(limit, clock, CHARGE, 0.3, concurrent=4)
        answer(limit, clock, RETRIEVE, 0.005, concurrent=4)
    assert limit.current_limit == INITIAL_LIMIT
    answer(limit, clock, RETRIEVE, 0.05, concurrent=WINDOW_SAMPLES)  # 10x a read's calm
    assert limit.current_limit < INITIAL_LIMIT


def test_a_few_slow_answers_in_a_window_are_not_an_overload() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    for _ in range(10):  # three of eight wait out a held authorization
        answer(limit, clock, CHARGE, 0.2, concurrent=5)
        answer(limit, clock, CHARGE, 10.0, concurrent=3)
    assert limit.current_limit == INITIAL_LIMIT


def test_a_burst_does_not_teach_it_that_queueing_is_calm() -> None:
    """A 20 s burst answered at 5x calm while the process is full: the limit goes down and
    stays down, because answers admitted under congestion raise the calm latency only
    slowly."""
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    burst = queueing(0.2, capacity=4)  # at its limit of 16, answered at 4x calm
    keep_full(limit, clock, CHARGE, latency=burst, for_seconds=5)
    answered = keep_full(limit, clock, CHARGE, latency=burst, for_seconds=15)
    assert median(answered) <= 0.2 * 2.5
    assert limit.current_limit <= 16
    assert limit._routes[CHARGE].calm_seconds <= 0.2 * 1.5


def test_after_a_burst_calm_answers_let_the_limit_grow_again() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    keep_full(limit, clock, CHARGE, latency=fixed(5.0), for_seconds=20)
    assert limit.current_limit == 4
    keep_full(limit, clock, CHARGE, latency=fixed(0.2), for_seconds=5)
    assert limit.current_limit >= INITIAL_LIMIT


def test_a_dependency_slower_for_minutes_becomes_the_new_calm() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=4, max_limit=256), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    keep_full(limit, clock, CHARGE, latency=fixed(0.8), for_seconds=120)
    assert limit.current_limit > INITIAL_LIMIT


def test_equal_bounds_are_a_fixed_limit() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=8, max_limit=8), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    answer(limit, clock, CHARGE, 0.2, concurrent=8, batches=10)
    assert limit.current_limit == 8
    answer(limit, clock, CHARGE, 5.0, concurrent=8, batches=10)
    assert limit.current_limit == 8


def test_the_limit_never_exceeds_the_ceiling() -> None:
    limit, clock = AdaptiveConcurrencyLimit(min_limit=1, max_limit=20), Clock()
    learn_calm(limit, clock, CHARGE, 0.2)
    keep_full(limit, clock, CHARGE, latency=fixed(0.2), for_seconds=10)
    assert limit.current_limit == 20
    assert AdaptiveConcurrencyLimit(min_limit=4, max_limit=2).current_limit == 2


@pytest.mark.parametrize("tolerance", [1.0, 0.5])
def test_a_tolerance_that_calls_calm_an_overload_is_refused(tolerance: float) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveConcurrencyLimit(min_limit=4, max_limit=256, tolerance=tolerance)


def _admitting(rate: int, seconds: int) -> tuple[AdaptiveConcurrencyLimit, Clock]:
    """A limit of `rate` in flight that admitted `rate` requests a second for `seconds`
    seconds, each answered within its second; the clock at the start of the next second."""
    limit, clock = AdaptiveConcurrencyLimit(min_limit=rate, max_limit=rate), Clock()
    for _ in range(seconds):
        for _ in range(rate):
            assert limit.try_admit(clock.now) is not None
        for _ in range(rate):
            limit.release()
        clock.now += 1.0
    for _ in range(rate):  # the next second's capacity, taken
        assert limit.try_admit(clock.now) is not None
    return limit, clock


def test_refused_requests_are_given_turns_at_the_admission_rate() -> None:
    limit, clock = _admitting(rate=10, seconds=3)
    waits = []
    for _ in range(35):
        assert limit.try_admit(clock.now) is None
        waits.append(limit.retry_after_seconds(clock.now))
    # Ten turns a second: the first ten refused come back in 1 s, the next ten in 2 s, ...
    assert waits == [1] * 10 + [2] * 10 + [3] * 10 + [4] * 5


def test_past_the_bound_refusals_are_spread_over_it_not_sent_back_together() -> None:
    limit, clock = _admitting(rate=1, seconds=3)
    waits = [limit.retry_after_seconds(clock.now) for _ in range(MAX_RETRY_AFTER_SECONDS + 5)]
    assert waits[:MAX_RETRY_AFTER_SECONDS] == list(range(1, MAX_RETRY_AFTER_SECONDS + 1))
    assert waits[MAX_RETRY_AFTER_SECONDS:] == [1, 2, 3, 4, 5]
    assert max(waits) == MAX_RETRY_AFTER_SECONDS


def test_once_nothing_is_refused_the_turns_run_out_and_retry_after_is_1() -> None:
    limit, clock = _admitting(rate=10, seconds=3)
    assert [limit.retry_after_seconds(clock.now) for _ in range(50)][-1] == 5
    clock.now += 6.0
    assert limit.retry_after_seconds(clock.now) == 1


def test_a_burst_is_served_at_capacity_with_about_one_refusal_per_client() -> None:
    """Open-loop arrivals at 3x what the process admits for 20 s, then 0.4x; every refused
    client comes back after the Retry-After it was given until admitted (each admitted request
    is answered within its second). The backlog is served at full capacity, and it costs about
    one refusal per client, not a retry storm."""
    capacity = 20
    limit, clock = AdaptiveConcurrencyLimit(min_limit=capacity, max_limit=capacity), Clock()
    due: list[float] = []  # when each waiting client sends its request (again)
    admitted_per_second, refusals, arrivals = [], 0, 0
    for second in range(150):
        rate = 3 * capacity if 15 <= second < 35 else (0.4 * capacity if second < 55 else 0)
        arrivals += int(rate)
        due += [second + (n + 0.5) / rate for n in range(int(rate))]
        now_due = sorted(t for t in due if t < second + 1)
        due = [t for t in due if t >= second + 1]
        admitted = 0
        for at in now_due:
            clock.now = at
            if limit.try_admit(at) is None:
                refusals += 1
                due.append(at + limit.retry_after_seconds(at))
            else:
                admitted += 1
        for _ in range(limit.in_flight):
            limit.release()
        admitted_per_second.append(admitted)
    assert not due and sum(admitted_per_second) == arrivals  # everyone served
    backlog = range(15, 75)  # while clients were waiting
    assert sum(admitted_per_second[s] for s in backlog) >= 0.9 * capacity * len(backlog)
    assert refusals <= 1.5 * arrivals
