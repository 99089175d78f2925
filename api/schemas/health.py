"""The health probes' answers (`api/routers/health.py` builds them as plain JSON)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from api.schemas.base import examples
from api.schemas.errors import ServiceUnavailableDetail

CheckState = Literal["ok", "down"]


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra=examples({"status": "ok"}))

    status: Literal["ok"]


class Checks(BaseModel):
    postgres: CheckState
    temporal: CheckState


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=examples({"status": "ok", "checks": {"postgres": "ok", "temporal": "ok"}})
    )

    status: Literal["ok"]
    checks: Checks


class NotReady(BaseModel):
    """The error object beside the probe's own fields, so a probe and a client both read it."""

    model_config = ConfigDict(
        json_schema_extra=examples(
            {
                "status": "unavailable",
                "checks": {"postgres": "ok", "temporal": "down"},
                "down": ["temporal"],
                "error": {
                    "type": "api_error",
                    "code": "service_unavailable",
                    "message": "Not ready: cannot reach temporal.",
                    "param": None,
                },
            }
        )
    )

    status: Literal["unavailable"]
    checks: Checks
    down: list[Literal["postgres", "temporal"]]
    error: ServiceUnavailableDetail
