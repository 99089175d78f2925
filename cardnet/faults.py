"""Fault injection for chaos runs: random latency, 503s, dropped responses and holds."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
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
    seed: int | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(by_alias=True)


@dataclass(frozen=True)
class FaultRoll:
    """The faults that fire for one request."""

    latency_seconds: float = 0.0
    error: bool = False
    drop: bool = False
    hold: bool = False


class FaultInjector:
    """Holds the current settings and rolls the dice for each operation request."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._rng = random.Random()
        self.replace(settings or FaultSettings())

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def replace(self, settings: FaultSettings) -> FaultSettings:
        with self._lock:
            self._settings = settings
            # Re-seeding on every replace makes a chaos run reproducible from its config.
            self._rng = random.Random(settings.seed)
        return settings

    def reset(self) -> FaultSettings:
        return self.replace(FaultSettings())

    def roll(self) -> FaultRoll:
        with self._lock:
            s = self._settings
            # Always draw all four numbers so one seed gives one sequence whatever the rates.
            draws = [self._rng.random() for _ in range(4)]
        return FaultRoll(
            latency_seconds=s.latency_ms / 1000 if draws[0] < s.latency_rate else 0.0,
            error=draws[1] < s.error_rate,
            drop=draws[2] < s.drop_rate,
            hold=draws[3] < s.hold_rate,
        )
