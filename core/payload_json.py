"""JSON payloads decoded into dataclasses with each class's field types resolved once.

Temporal's JSON converter (temporalio.converter `value_to_type`) calls `typing.get_type_hints`
on a dataclass for every value it decodes. With `from __future__ import annotations` (every
module of ours) each call evaluates the class's annotation strings again: about a tenth of a
worker's CPU per charge went there. `CachedDataclassConverter` is the SDK's own extension point
(a `JSONTypeConverter`, tried before the default conversion) doing what the SDK does for a
dataclass, with the field types looked up once per class: a class's annotations do not change
while the process runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, get_type_hints

from temporalio.converter import JSONPlainPayloadConverter, JSONTypeConverter, value_to_type


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    hint: Any
    init: bool


@functools.cache
def _fields_of(cls: type) -> tuple[_Field, ...]:
    hints = get_type_hints(cls)
    return tuple(
        _Field(field.name, hints[field.name], field.init) for field in dataclasses.fields(cls)
    )


class CachedDataclassConverter(JSONTypeConverter):
    """A dataclass from a JSON object, as the SDK converts one: fields missing from the object
    are left to the class's defaults (its constructor refuses a missing required one), unknown
    keys are ignored, `init=False` fields are set after construction, and a field that fails
    raises TypeError naming it (which lets a Union try its next member)."""

    def to_typed_value(self, hint: type, value: Any) -> Any | None:
        if not (
            isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict)
        ):
            return JSONTypeConverter.Unhandled
        converters = [self]
        arguments: dict[str, Any] = {}
        later: dict[str, Any] = {}
        for field in _fields_of(hint):
            if field.name not in value:
                continue
            try:
                converted = value_to_type(field.hint, value[field.name], converters)
            except Exception as error:
                raise TypeError(
                    f"Failed converting field {field.name} on dataclass {hint}"
                ) from error
            (arguments if field.init else later)[field.name] = converted
        instance = hint(**arguments)
        for name, converted in later.items():
            object.__setattr__(instance, name, converted)
        return instance


def json_payload_converter() -> JSONPlainPayloadConverter:
    """The SDK's JSON converter (same encoding, same output) with cached dataclass fields."""
    return JSONPlainPayloadConverter(custom_type_converters=[CachedDataclassConverter()])
