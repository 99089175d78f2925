"""Shared schema pieces: camelCase JSON, RFC 3339 timestamps, list envelopes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel

from core.domain import rfc3339

Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str)]


class ApiModel(BaseModel):
    """Responses: camelCase on the wire, built from attributes."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              from_attributes=True)


class RequestModel(BaseModel):
    """Requests: camelCase (snake_case accepted), unknown parameters refused, not ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def idempotency_parameters(self) -> dict[str, Any]:
        """What an Idempotency-Key's fingerprint covers (api/idempotency.py): every parameter
        as validated, defaults included. A model holding card data overrides it, since the
        fingerprint is stored and must derive from nothing secret."""
        return self.model_dump(mode="json")


Item = TypeVar("Item")


class ListOf(ApiModel, Generic[Item]):
    object: str = "list"
    data: list[Item]
    has_more: bool
