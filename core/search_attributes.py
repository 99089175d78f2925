"""Temporal search attributes that operators filter payments by in the Web UI.

Registered by the launcher (`temporal server start-dev --search-attribute …`), by
`durapay temporal-setup` for an external Temporal, and by the compose file's setup job; the
names here are the single source for all three.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

MERCHANT_ID = SearchAttributeKey.for_keyword("DurapayMerchantId")
STATUS = SearchAttributeKey.for_keyword("DurapayStatus")
AMOUNT = SearchAttributeKey.for_int("DurapayAmount")
CURRENCY = SearchAttributeKey.for_keyword("DurapayCurrency")
# True while an unknown outcome has outlived the reconciliation horizon: a human must look.
MANUAL_REVIEW = SearchAttributeKey.for_bool("DurapayManualReview")

ALL = (MERCHANT_ID, STATUS, AMOUNT, CURRENCY, MANUAL_REVIEW)


def registration_flags() -> list[str]:
    """`--search-attribute Name=Type` flags for `temporal server start-dev`."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={_type_name(key)}"]
    return flags


def _type_name(key: SearchAttributeKey) -> str:
    # The CLI spells the indexed value types as Keyword, Int, Bool …
    return {"KEYWORD": "Keyword", "INT": "Int", "BOOL": "Bool"}[key.indexed_value_type.name]
