"""Runtime settings of the simulator, read from flags and DURAPAY_CARDNET_* variables."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cardnet.faults import FaultSettings

DEFAULT_PORT = 8081
DEFAULT_HOLD_SECONDS = 15.0
DEFAULT_STATUS_LAG_SECONDS = 30.0

ENV_PORT = "DURAPAY_CARDNET_PORT"
ENV_DATA_DIR = "DURAPAY_CARDNET_DATA_DIR"
ENV_HOME = "DURAPAY_HOME"
ENV_HOLD_SECONDS = "DURAPAY_CARDNET_HOLD_SECONDS"
ENV_FAULTS = "DURAPAY_CARDNET_FAULTS"
ENV_STATUS_LAG_SECONDS = "DURAPAY_CARDNET_STATUS_LAG_SECONDS"
ENV_TRICKLE_SECONDS = "DURAPAY_CARDNET_TRICKLE_SECONDS"


@dataclass(frozen=True)
class Settings:
    # How long held operations (and 1018/1026/1059 cards) keep the caller waiting.
    hold_seconds: float = DEFAULT_HOLD_SECONDS
    # Faults active from startup; /faults replaces them at runtime (not persisted).
    faults: FaultSettings = field(default_factory=FaultSettings)
    # How long after its commit the status API of card 1091 answers `not_found`.
    status_lag_seconds: float = DEFAULT_STATUS_LAG_SECONDS
    # The pause between the pieces of a trickled body; None = hold_seconds, which is chosen to
    # outlast the caller's timeout anyway.
    trickle_seconds: float | None = None

    @property
    def trickle_pause_seconds(self) -> float:
        return self.hold_seconds if self.trickle_seconds is None else self.trickle_seconds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        hold = env.get(ENV_HOLD_SECONDS)
        faults = env.get(ENV_FAULTS)
        lag = env.get(ENV_STATUS_LAG_SECONDS)
        trickle = env.get(ENV_TRICKLE_SECONDS)
        return cls(
            hold_seconds=parse_seconds(hold) if hold else DEFAULT_HOLD_SECONDS,
            # Invalid JSON fails the start loudly rather than running a chaos test without chaos.
            faults=FaultSettings.model_validate_json(faults) if faults else FaultSettings(),
            status_lag_seconds=parse_seconds(lag) if lag else DEFAULT_STATUS_LAG_SECONDS,
            trickle_seconds=parse_seconds(trickle) if trickle else None,
        )


def parse_seconds(raw: str) -> float:
    """A duration setting: a finite float >= 0 (argparse turns the ValueError into usage)."""
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {raw}")
    return value


def default_port(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PORT)
    return int(raw) if raw else DEFAULT_PORT


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(ENV_DATA_DIR):
        return Path(env[ENV_DATA_DIR])
    if env.get(ENV_HOME):
        return Path(env[ENV_HOME]) / "cardnet"
    return Path(".durapay") / "cardnet"
