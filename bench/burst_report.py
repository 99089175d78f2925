"""The burst step's figures (bench/burst.py), worked out from what each arrival saw: its phase,
answers per phase, latency percentiles, when latency was back to calm, and the verdicts.

Two clocks, both in seconds since the step's first arrival was due:
* an arrival's figures (its first answers, how it ended, its latencies) belong to the phase
  it was due in;
* an attempt's figures (every answer, refusals, connection errors, timeouts) belong to the
  phase in which it was sent: a retry of a burst arrival sent after the burst is the server's
  answer after the burst.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.measurement import ratio

REFUSALS = frozenset({"429", "503"})
ACCEPTED_CHARGE = frozenset({"200", "202"})
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection error"

# The targets: refusals answered at once, accepted work not queued, the backlog gone quickly.
REFUSAL_P99_TARGET_SECONDS = 0.1
ACCEPTED_P99_TARGET_FACTOR = 3.0  # burst and after phases' accepted p99 / calm's, at most
RECOVERY_TARGET_SECONDS = 5.0
RECOVERY_WINDOW_SECONDS = 1.0
RECOVERY_FACTOR = 1.5  # a window is calm again when its p50 is within this × the calm p50


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rate: float  # arrivals a second, evenly spaced


def phase_starts(phases: Sequence[Phase]) -> list[float]:
    starts, at = [], 0.0
    for phase in phases:
        starts.append(at)
        at += phase.seconds
    return starts


def arrival_schedule(phases: Sequence[Phase]) -> list[tuple[float, int]]:
    """(when it is due, its phase's index) of every arrival: `rate × seconds` of them per
    phase (rounded), evenly spaced from the phase's start."""
    schedule = []
    for index, (phase, start) in enumerate(zip(phases, phase_starts(phases), strict=True)):
        count = round(phase.rate * phase.seconds)
        schedule += [(start + n / phase.rate, index) for n in range(count)]
    return schedule


def phase_at(offset: float, phases: Sequence[Phase]) -> int:
    """The index of the phase `offset` falls in; the last one for anything after it."""
    for index, start in reversed(list(enumerate(phase_starts(phases)))):
        if offset >= start:
            return index
    return 0


@dataclass
class Attempt:
    request: str  # "create" or "charge"
    sent: float  # seconds since the step's start
    seconds: float  # until its answer, its timeout or its connection error
    answer: str  # "201", "503", "409 idempotency_key_in_use", TIMEOUT, CONNECTION_ERROR


@dataclass
class Arrival:
    """One customer's create + charge, with every attempt the careful client made."""

    at: float  # when it was due, seconds since the step's start
    phase: int
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = ""  # the charge's 200/202, or what ended it ("create 400", TIMEOUT, …)
    intent_id: str | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome in ACCEPTED_CHARGE

    @property
    def end_to_end(self) -> float:
        """From when it was due until the charge's first 200/202, every refusal and wait
        included: what the customer waited. Infinite if it was never accepted."""
        if not self.accepted:
            return math.inf
        last = self.attempts[-1]
        return last.sent + last.seconds - self.at

    @property
    def served(self) -> float | None:
        """The accepted create's and the accepted charge's own answer times: how long the
        stack took over the work it took on (waits after refusals left out)."""
        if not self.accepted:
            return None
        # Each request ends at its first accepted answer: its last attempt is that one.
        create = [a.seconds for a in self.attempts if a.request == "create"]
        charge = [a.seconds for a in self.attempts if a.request == "charge"]
        return create[-1] + charge[-1]

    def first_answer(self, request: str) -> str | None:
        return next((a.answer for a in self.attempts if a.request == request), None)


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of the values at or below it;
    NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class PhaseSummary:
    phase: Phase
    arrivals: int = 0
    first_answers: dict[str, Counter[str]] = field(
        default_factory=lambda: {"create": Counter(), "charge": Counter()}
    )
    outcomes: Counter[str] = field(default_factory=Counter)
    served: list[float] = field(default_factory=list)  # accepted arrivals
    end_to_end: list[float] = field(default_factory=list)  # accepted arrivals
    answers: Counter[str] = field(default_factory=Counter)  # attempts sent in the phase
    refusals: list[float] = field(default_factory=list)  # seconds to each 429/503 sent in it
    connection_errors: int = 0
    timeouts: int = 0


def summarize(arrivals: Sequence[Arrival], phases: Sequence[Phase]) -> list[PhaseSummary]:
    summaries = [PhaseSummary(phase) for phase in phases]
    for arrival in arrivals:
        own = summaries[arrival.phase]
        own.arrivals += 1
        own.outcomes[arrival.outcome] += 1
        for request, counts in own.first_answers.items():
            first = arrival.first_answer(request)
            if first is not None:
                counts[first] += 1
        if arrival.accepted:
            own.end_to_end.append(arrival.end_to_end)
            own.served.append(arrival.served or 0.0)
        for attempt in arrival.attempts:
            sent_in = summaries[phase_at(attempt.sent, phases)]
            sent_in.answers[f"{attempt.request} {attempt.answer}"] += 1
            if attempt.answer in REFUSALS:
                sent_in.refusals.append(attempt.seconds)
            elif attempt.answer == TIMEOUT:
                sent_in.timeouts += 1
            elif attempt.answer == CONNECTION_ERROR:
                sent_in.connection_errors += 1
    return summaries


def window_p50s(
    arrivals: Sequence[Arrival], start: float, end: float, window: float = RECOVERY_WINDOW_SECONDS
) -> list[tuple[float, float]]:
    """(window start, p50 of its arrivals' end-to-end latency) for back-to-back windows of
    arrivals due from `start` until `end`; an arrival never accepted counts as infinitely
    late, and a window without arrivals is left out."""
    buckets: dict[int, list[float]] = {}
    for arrival in arrivals:
        if start <= arrival.at < end:
            buckets.setdefault(int((arrival.at - start) // window), []).append(arrival.end_to_end)
    return [(start + n * window, percentile(buckets[n], 0.5)) for n in sorted(buckets)]


def served_window_p50s(
    arrivals: Sequence[Arrival], start: float, end: float, window: float = RECOVERY_WINDOW_SECONDS
) -> list[tuple[float, float]]:
    """(window start, p50 of the served latency of the arrivals whose accepted charge was sent
    in it) for back-to-back windows from `start` until `end`: how long the stack took over
    the work it took on at each moment, whenever that work first arrived. A window without an
    accepted charge is left out."""
    buckets: dict[int, list[float]] = {}
    for arrival in arrivals:
        served = arrival.served
        if served is None:
            continue
        sent = arrival.attempts[-1].sent
        if start <= sent < end:
            buckets.setdefault(int((sent - start) // window), []).append(served)
    return [(start + n * window, percentile(buckets[n], 0.5)) for n in sorted(buckets)]


def recovery_seconds(
    windows: Sequence[tuple[float, float]],
    since: float,
    calm_p50: float,
    factor: float = RECOVERY_FACTOR,
) -> float | None:
    """Seconds from `since` (the burst's end) until the start of the first window from which
    on every window's p50 is within `factor` × `calm_p50`: 0.0 when the first one already is,
    None when the last one still is not (or there is no window)."""
    if not windows or math.isnan(calm_p50):
        return None
    calm_from: float | None = None
    for start, p50 in windows:
        if p50 <= factor * calm_p50:
            if calm_from is None:
                calm_from = start
        else:
            calm_from = None
    return None if calm_from is None else max(0.0, calm_from - since)


@dataclass(frozen=True)
class Verdict:
    name: str
    measured: str
    ok: bool


def verdicts(
    summaries: Sequence[PhaseSummary],
    recovery: float | None,
    settled: bool,
    audit_counts: dict[str, int],
) -> list[Verdict]:
    """The burst's targets; `summaries` are calm, burst, after in that order."""
    calm = summaries[0]
    failures = sum(s.connection_errors + s.timeouts for s in summaries)
    refusals = [seconds for s in summaries for seconds in s.refusals]
    refusal_p99 = percentile(refusals, 0.99)
    calm_p99 = percentile(calm.served, 0.99)
    later_p99 = max(
        (percentile(s.served, 0.99) for s in summaries[1:] if s.served), default=math.nan
    )
    audit_total = sum(audit_counts.values())
    return [
        Verdict(
            "no connection errors or client timeouts",
            f"{failures} (connection errors + timeouts)",
            failures == 0,
        ),
        Verdict(
            f"refusals answered with p99 ≤ {REFUSAL_P99_TARGET_SECONDS * 1000:.0f} ms",
            "no refusals"
            if not refusals
            else f"{refusal_p99 * 1000:.0f} ms ({len(refusals)} refusals)",
            not refusals or refusal_p99 <= REFUSAL_P99_TARGET_SECONDS,
        ),
        Verdict(
            f"accepted p99 ≤ {ACCEPTED_P99_TARGET_FACTOR:g}× the calm p99",
            f"{later_p99 * 1000:.0f} ms (burst or after, the larger) vs "
            f"{calm_p99 * 1000:.0f} ms calm: {ratio(later_p99, calm_p99):.1f}×",
            later_p99 <= ACCEPTED_P99_TARGET_FACTOR * calm_p99,
        ),
        Verdict(
            f"back to calm within {RECOVERY_TARGET_SECONDS:g} s of the burst's end",
            "not within the after phase" if recovery is None else f"{recovery:.1f} s",
            recovery is not None and recovery <= RECOVERY_TARGET_SECONDS,
        ),
        Verdict(
            "every accepted intent settled, chaos audit counts all 0",
            f"{'settled' if settled else 'NOT settled'}, audit counts sum {audit_total}",
            settled and audit_total == 0,
        ),
    ]
