"""How many requests one API process works on at once: an adaptive limit, pure logic, no I/O.

A fixed bound cannot be right: what a process can finish promptly depends on the machine, on
how many API processes share the workers and Temporal, and on how fast the card network
answers today. So the limit follows the latency it observes, as a gradient limiter does
(Netflix's concurrency-limits, Envoy's adaptive concurrency):

- Each answered request's latency is compared with its route's *calm latency*, so a slow charge
  and a quick retrieve are judged each against its own normal. The ratio of the two is the
  request's slowdown.
- Every window (`WINDOW_SAMPLES` answers, or fewer once `WINDOW_SECONDS` passed), the median
  slowdown decides. Above `tolerance`, work is queueing somewhere (this process's event loop,
  the database pool, the workers behind Temporal): the limit shrinks in proportion
  (`tolerance / median`, at most halved, at least by 10 %). At or below it, and if the limit
  was nearly reached in the window, the limit grows by its square root. A limit that was not
  reached does not grow: the limit is only as high as a load that was answered at calm latency
  has proven, so a burst meets a limit near the calm load's, not the ceiling.
- A route's calm latency is a running median (a multiplicative step per answer) of the answers
  that found the process uncongested (at most half the limit in flight when they were
  admitted). Answers admitted under congestion may raise it only slowly (at most e-fold per
  `CALM_DRIFT_SECONDS`), so a burst does not teach the limiter that queueing is normal, while
  a dependency that stays slower for minutes becomes the new calm.
- The limit stays between `min_limit` and `max_limit`; `min_limit == max_limit` is a fixed
  bound. It starts at `INITIAL_LIMIT` (within those bounds).

A refused client is told when to come back (`retry_after_seconds`): it is given the next free
turn at the rate this process admits requests, so the clients refused in a burst come back
spread out, each about when its turn to be served comes, instead of all together (waves that
leave the process idle in between) or all every second (a retry storm whose refusals take the
process's CPU). The turns are `1 / A` apart for A admissions a second over the last
`RATE_WINDOWS` seconds. Past `MAX_RETRY_AFTER_SECONDS` no turn is given (a client would not
wait that long): the overflow is spread over that many seconds, one second after the other.
Refused again (a newcomer took its turn's capacity), a client simply gets a later turn. Once nothing
is refused, the next free turn falls in the past and Retry-After is back to 1.

The median is robust to the few answers that are slow for their own reasons (a card network
that holds one authorization, a charge that waits out its unknown outcome). Only answers that
did the route's work are samples (api/in_flight.py decides: 2xx and card declines, not an
idempotent replay, not an error).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median

INITIAL_LIMIT = 16
WINDOW_SAMPLES = 8
WINDOW_SECONDS = 1.0
MIN_WINDOW_SAMPLES = 3  # a window closed by time needs this many answers to decide anything
CALM_STEP = 0.05  # the running median's multiplicative step per answer
CALM_DRIFT_SECONDS = 60.0
SMALLEST_DECREASE = 0.9
LARGEST_DECREASE = 0.5
NEARLY_REACHED = 0.75  # share of the limit in flight that counts as the limit being reached
MAX_RETRY_AFTER_SECONDS = 30
RATE_WINDOW_SECONDS = 1.0
RATE_WINDOWS = 3  # the admission rate that spaces refused clients' turns: over this many


@dataclass
class _Route:
    calm_seconds: float
    last_sample_at: float


@dataclass
class AdaptiveConcurrencyLimit:
    min_limit: int
    max_limit: int
    tolerance: float = 2.0
    limit: float = field(init=False)
    in_flight: int = field(init=False, default=0)
    refused: int = field(init=False, default=0)
    samples: int = field(init=False, default=0)
    _routes: dict[str, _Route] = field(init=False, default_factory=dict)
    _slowdowns: list[float] = field(init=False, default_factory=list)
    _window_started_at: float | None = field(init=False, default=None)
    _peak_in_flight: int = field(init=False, default=0)
    # Admissions in each of the last RATE_WINDOWS rate windows, and in the one now open.
    _windows: deque[int] = field(init=False, default_factory=lambda: deque(maxlen=RATE_WINDOWS))
    _admitted: int = field(init=False, default=0)
    _rate_window_started_at: float | None = field(init=False, default=None)
    _next_turn: float = field(init=False, default=-math.inf)  # the next free turn (monotonic)
    _overflow: int = field(init=False, default=0)  # the last Retry-After given past every turn

    def __post_init__(self) -> None:
        if self.max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        if self.tolerance <= 1:
            raise ValueError("tolerance must be above 1 (a slowdown of 1 is calm)")
        self.min_limit = max(1, min(self.min_limit, self.max_limit))
        self.limit = float(min(max(INITIAL_LIMIT, self.min_limit), self.max_limit))

    @property
    def current_limit(self) -> int:
        return int(self.limit)

    def try_admit(self, now: float) -> int | None:
        """Admit one request: the number in flight when it was admitted (itself excluded),
        to hand back to `release`; None when the process is at its limit (counted)."""
        self._roll_rate_window(now)
        if self.in_flight >= self.current_limit:
            self.refused += 1
            return None
        self._admitted += 1
        admitted_with = self.in_flight
        self.in_flight += 1
        self._peak_in_flight = max(self._peak_in_flight, self.in_flight)
        return admitted_with

    def retry_after_seconds(self, now: float) -> int:
        """Whole seconds a request refused at `now` should wait before it is sent again: its
        turn, the next free one (module docstring). Call it once per refusal: it takes that
        turn."""
        self._roll_rate_window(now)
        done = list(self._windows)
        rate = max(1.0, sum(done) / (len(done) * RATE_WINDOW_SECONDS)) if done else 1.0
        turn = max(now + 1 / rate, self._next_turn)
        if turn - now > MAX_RETRY_AFTER_SECONDS + 1e-9:
            # Every turn up to the bound is taken: spread the overflow over the bound's seconds
            # instead of sending it all back at the bound together.
            self._overflow = self._overflow % MAX_RETRY_AFTER_SECONDS + 1
            return self._overflow
        self._next_turn = turn + 1 / rate
        # (less a rounding error of the sum of turns, which must not cost a second)
        return max(1, math.ceil(turn - now - 1e-9))

    def _roll_rate_window(self, now: float) -> None:
        started = self._rate_window_started_at
        if started is not None and now - started < RATE_WINDOW_SECONDS:
            return
        if started is not None:
            self._windows.append(self._admitted)
            # Windows in which no request came admitted none.
            quiet = int((now - started) // RATE_WINDOW_SECONDS) - 1
            self._windows.extend([0] * min(max(0, quiet), RATE_WINDOWS))
        self._admitted = 0
        self._rate_window_started_at = now

    def release(self) -> None:
        """An admitted request ended without a latency sample (an error, a replay)."""
        self.in_flight -= 1

    def release_with_sample(
        self, route: str, seconds: float, *, admitted_with: int, now: float
    ) -> None:
        """An admitted request answered after doing its route's work in `seconds`."""
        self.in_flight -= 1
        self.samples += 1
        seconds = max(seconds, 1e-6)
        known = self._routes.get(route)
        if known is None:
            self._routes[route] = _Route(calm_seconds=seconds, last_sample_at=now)
            return  # its own calm: no slowdown to judge yet
        self._slowdowns.append(seconds / known.calm_seconds)
        self._learn_calm(known, seconds, congested=admitted_with >= self.min_limit, now=now)
        if self._window_started_at is None:
            self._window_started_at = now
        elapsed = now - self._window_started_at
        if len(self._slowdowns) >= WINDOW_SAMPLES or (
            elapsed >= WINDOW_SECONDS and len(self._slowdowns) >= MIN_WINDOW_SAMPLES
        ):
            self._decide(median(self._slowdowns))
            self._slowdowns.clear()
            self._window_started_at = now
            self._peak_in_flight = self.in_flight

    def _learn_calm(self, route: _Route, seconds: float, *, congested: bool, now: float) -> None:
        up_step = CALM_STEP
        if congested:
            up_step = min(CALM_STEP, max(0.0, now - route.last_sample_at) / CALM_DRIFT_SECONDS)
        if seconds > route.calm_seconds:
            route.calm_seconds *= 1 + up_step
        elif seconds < route.calm_seconds:
            route.calm_seconds *= 1 - CALM_STEP
        route.last_sample_at = now

    def _decide(self, slowdown: float) -> None:
        if slowdown > self.tolerance:
            factor = min(SMALLEST_DECREASE, max(LARGEST_DECREASE, self.tolerance / slowdown))
            self.limit = max(float(self.min_limit), self.limit * factor)
        elif (
            slowdown <= (1 + self.tolerance) / 2
            and self._peak_in_flight >= self.limit * NEARLY_REACHED
        ):
            self.limit = min(float(self.max_limit), self.limit + math.sqrt(self.limit))
