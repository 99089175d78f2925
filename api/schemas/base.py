"""Shared schema pieces: camelCase JSON, RFC 3339 timestamps, list envelopes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonValue

from core.domain import rfc3339

Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


def one_of(values: Iterable[str], *, nullable: bool = False, **field: Any) -> Any:
    """A `str` field whose OpenAPI schema lists the values it can hold (`enum`), for response
    fields filled from database columns: the wire format and the Python type stay `str`, and
    the Schemathesis run checks every answer against the list."""
    allowed: list[JsonValue] = [str(value) for value in values]
    return Field(json_schema_extra={"enum": allowed + [None] if nullable else allowed}, **field)


def answered_currency() -> Any:
    """A currency as answered: lowercase ISO 4217 (requests accept only the supported ones).
    Documentation only, like `one_of`: answers are not validated again."""
    return Field(json_schema_extra={"pattern": "^[a-z]{3}$"})


def examples(*example: dict[str, Any]) -> dict[str, Any]:
    """`json_schema_extra` giving a model's OpenAPI examples (the wire form: camelCase)."""
    return {"examples": list(example)}


class ApiModel(BaseModel):
    """Responses: camelCase on the wire, built from attributes."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


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
    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
