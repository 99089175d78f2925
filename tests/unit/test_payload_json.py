"""core/payload_json.py: dataclasses decoded as the SDK's own JSON converter decodes them, with
each class's field types resolved once."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Any

import pytest
from temporalio.converter import JSONPlainPayloadConverter

from core.domain import CardSummary, IntentStatus, RecordedTransaction
from core.payload_json import _fields_of, json_payload_converter
from workflows.payment_messages import Address, ChargeInput, OperationResult

SDK = JSONPlainPayloadConverter()
OURS = json_payload_converter()


class Colour(StrEnum):
    RED = "red"


@dataclasses.dataclass
class Leaf:
    number: int
    colour: Colour = Colour.RED


@dataclasses.dataclass
class Shapes:
    leaves: list[Leaf]
    by_name: dict[str, Leaf]
    either: Leaf | str
    optional: Leaf | None = None
    default: int = 7
    counted: int = dataclasses.field(init=False, default=0)


def _shapes() -> Shapes:
    shapes = Shapes([Leaf(1), Leaf(2)], {"a": Leaf(3)}, "text", optional=Leaf(4))
    shapes.counted = 5
    return shapes


CHARGE = ChargeInput(
    "card_1", CardSummary("visa", "4242", 12, 2030), Address("pi_1", "confirm_charge", "charge:key")
)
RESULT = OperationResult(
    IntentStatus.SUCCEEDED,
    RecordedTransaction("txn_1", "capture", "succeeded", 2499, created_at=1.5),
)


@pytest.mark.parametrize("value", [CHARGE, RESULT, _shapes(), Shapes([], {}, Leaf(9), default=8)])
def test_decodes_what_the_sdk_decodes(value: Any) -> None:
    payload = SDK.to_payload(value)
    assert payload is not None
    assert OURS.to_payload(value) == payload  # encoding is the SDK's own
    decoded = OURS.from_payload(payload, type(value))
    assert decoded == SDK.from_payload(payload, type(value)) == value
    if isinstance(value, Shapes):
        assert decoded.counted == value.counted  # init=False: set after construction


def test_missing_fields_and_wrong_types_are_refused_as_the_sdk_refuses_them() -> None:
    for raw in (b'{"default": 1}', b'{"leaves": "no", "by_name": {}, "either": "x"}'):
        payload = SDK.to_payload(None)
        assert payload is not None
        payload.data = raw
        with pytest.raises(Exception) as sdk_error:
            SDK.from_payload(payload, Shapes)
        with pytest.raises(type(sdk_error.value)):
            OURS.from_payload(payload, Shapes)


def test_a_class_fields_are_resolved_once() -> None:
    payload = SDK.to_payload(CHARGE)
    assert payload is not None
    OURS.from_payload(payload, ChargeInput)
    before = _fields_of.cache_info()
    for _ in range(5):
        OURS.from_payload(payload, ChargeInput)
    after = _fields_of.cache_info()
    assert after.misses == before.misses
    assert after.hits >= before.hits + 10  # ChargeInput, CardSummary and Address each time
