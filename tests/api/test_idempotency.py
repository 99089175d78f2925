"""api/idempotency.py: what a key's record holds (nothing derived from the card's number or
CVC)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from api.idempotency import request_fingerprint
from api.schemas.transactions import TransactionCreate
from core.settings import Settings
from tests.api.conftest import CARD_4242, Merchant, idempotency_record, served_by
from tests.api.test_transactions import AnsweringPaymentWorkflow

pytestmark = pytest.mark.api


def _charge(**card: Any) -> dict[str, Any]:
    return {"type": "charge", "card": {**CARD_4242, **card}}


async def test_a_charge_key_holds_nothing_derived_from_the_number_or_the_cvc(
        settings: Settings, merchant: Merchant, db: asyncpg.Pool) -> None:
    async with served_by(AnsweringPaymentWorkflow, settings, merchant) as shop:
        intent = await shop.create_intent()
        path = f"/payment-intents/{intent['id']}/transactions"
        first = await shop.post(path, _charge(cvc="123"), idempotency_key="card-key")
        assert first.status_code == 200, first.text
        record = await idempotency_record(db, merchant, "card-key")
        assert record is not None
        # The fingerprint covers the card as the answer shows it (brand, last4, expiry), which
        # the record's stored answer and the vault's row hold in clear anyway; nothing else.
        assert record["request_hash"] == request_fingerprint(
            settings.resolved_master_key(), record["endpoint"],
            {"type": "charge", "card": {"brand": "visa", "last4": "4242", "expMonth": 12,
                                        "expYear": 2030}})
        assert CARD_4242["number"] not in str(dict(record))
        # So another CVC, or another number with the same brand, last4 and expiry, is the same
        # request: its answer is replayed and the record does not change.
        for card in ({"cvc": "987"}, {"cvc": "4321"}, {"number": "4000000000024242"}):
            again = await shop.post(path, _charge(**card), idempotency_key="card-key")
            assert (again.status_code, again.content) == (200, first.content), card
            assert await idempotency_record(db, merchant, "card-key") == record
        # Another card as the answer would show it is still another request.
        for card in ({"number": "5555555555554444"}, {"expYear": 2031}, {"expMonth": 11}):
            other = await shop.post(path, _charge(**card), idempotency_key="card-key")
            assert other.status_code == 400, card
            assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_a_fingerprint_is_the_same_whatever_the_cvc() -> None:
    def fingerprint(**card: Any) -> str:
        body = TransactionCreate.model_validate(_charge(**card))
        return request_fingerprint(b"k" * 32, "POST /payment-intents/pi_1/transactions",
                                   body.idempotency_parameters())

    assert fingerprint(cvc="123") == fingerprint(cvc="999") == fingerprint(cvc="0000")
    assert fingerprint() != fingerprint(number="5555555555554444")
