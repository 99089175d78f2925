"""Fault injection for chaos runs: latency, 503s, holds, and answers spoiled on the wire."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class FaultSettings(BaseModel):
    """The fault configuration, exchanged as camelCase JSON on /faults."""

    # extra="forbid" so a typo such as "errorrate" is a 400 instead of a silent no-op.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    latency_ms: int = Field(default=0, ge=0)
    latency_rate: Rate = 0.0
    error_rate: Rate = 0.0
    drop_rate: Rate = 0.0
    hold_rate: Rate = 0.0
    # The bad-day faults: each commits first, then spoils the answer on the way back.
    commit_then_error_rate: Rate = 0.0
    garbage_rate: Rate = 0.0
    trickle_rate: Rate = 0.0
    # Not drawn: every committed operation is `not_found` to status queries for this long.
    status_lag_ms: int = Field(default=0, ge=0)
    # Not drawn: every operation request takes this long in transit before the network sees
    # it, and its caller hanging up does not recall it (a late-arriving original).
    transit_delay_ms: int = Field(default=0, ge=0)
    seed: int | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(by_alias=True)


class WireFault(StrEnum):
    """How the answer to a committed operation goes wrong on its way back to the caller."""

    # The connection is closed mid-body: a transport error.
    DROP = "drop"
    # A gateway in front of the network answers 502 with its own (HTML) body.
    GATEWAY_ERROR = "gateway_error"
    # A complete 200 response whose body is truncated JSON.
    GARBAGE = "garbage"
    # The right answer, but its body arrives slower than the caller's timeout.
    TRICKLE = "trickle"


@dataclass(frozen=True)
class FaultRoll:
    """The faults that fire for one request."""

    latency_seconds: float = 0.0
    error: bool = False
    drop: bool = False
    hold: bool = False
    commit_then_error: bool = False
    garbage: bool = False
    trickle: bool = False

    @property
    def wire_fault(self) -> WireFault | None:
        """The one wire fault applied when several fire: the first in this order."""
        if self.drop:
            return WireFault.DROP
        if self.commit_then_error:
            return WireFault.GATEWAY_ERROR
        if self.garbage:
            return WireFault.GARBAGE
        if self.trickle:
            return WireFault.TRICKLE
        return None


class FaultInjector:
    """Holds the current settings and rolls the dice for each operation request."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._rng = random.Random()
        self._bad_day_rng = random.Random()
        self.replace(settings or FaultSettings())

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def replace(self, settings: FaultSettings) -> FaultSettings:
        with self._lock:
            self._settings = settings
            # Re-seeding on every replace makes a chaos run reproducible from its config.
            self._rng = random.Random(settings.seed)
            # A separate stream, so that adding the bad-day faults left the first four faults
            # of every existing seeded run exactly as they were.
            bad_day_seed = None if settings.seed is None else f"bad-day:{settings.seed}"
            self._bad_day_rng = random.Random(bad_day_seed)
        return settings

    def reset(self) -> FaultSettings:
        return self.replace(FaultSettings())

    def roll(self) -> FaultRoll:
        with self._lock:
            s = self._settings
            # Always draw every number so one seed gives one sequence whatever the rates.
            draws = [self._rng.random() for _ in range(4)]
            bad_day = [self._bad_day_rng.random() for _ in range(3)]
        return FaultRoll(
            latency_seconds=s.latency_ms / 1000 if draws[0] < s.latency_rate else 0.0,
            error=draws[1] < s.error_rate,
            drop=draws[2] < s.drop_rate,
            hold=draws[3] < s.hold_rate,
            commit_then_error=bad_day[0] < s.commit_then_error_rate,
            garbage=bad_day[1] < s.garbage_rate,
            trickle=bad_day[2] < s.trickle_rate,
        )
