"""The payload codec: what Temporal stores is ciphertext under a key derived for it alone."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from core.codec import ENCODING, PayloadEncryptionCodec, data_converter
from core.domain import CardSummary
from workflows.payment_intent import ChargeInput

KEY = os.urandom(32)


async def test_payloads_round_trip_and_are_unreadable_at_rest() -> None:
    converter = data_converter(KEY)
    charge = ChargeInput("card_abc", CardSummary("visa", "4242", 12, 2030))
    [stored] = await converter.encode([charge])
    assert stored.metadata["encoding"] == ENCODING
    assert b"4242" not in stored.data and b"card_abc" not in stored.data
    [back] = await converter.decode([stored], [ChargeInput])
    assert back == charge


async def test_plain_payloads_from_before_the_codec_still_decode() -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')
    assert await PayloadEncryptionCodec(KEY).decode([plain]) == [plain]


async def test_another_master_key_is_named_not_guessed() -> None:
    [stored] = await PayloadEncryptionCodec(KEY).encode([Payload(data=b"x")])
    with pytest.raises(ValueError, match="another DURAPAY_MASTER_KEY"):
        await PayloadEncryptionCodec(os.urandom(32)).decode([stored])


async def test_tampered_ciphertext_is_refused() -> None:
    codec = PayloadEncryptionCodec(KEY)
    [stored] = await codec.encode([Payload(data=b"amount=2499")])
    stored.data = stored.data[:-1] + bytes([stored.data[-1] ^ 1])
    with pytest.raises(InvalidTag):
        await codec.decode([stored])


async def test_payload_key_is_not_the_master_key() -> None:
    # Derived with its own label, so payload ciphertext is not card-vault ciphertext (and the
    # other way round): the master key itself does not open it.
    [stored] = await PayloadEncryptionCodec(KEY).encode([Payload(data=b"x")])
    with pytest.raises(InvalidTag):
        AESGCM(KEY).decrypt(stored.data[:12], stored.data[12:], stored.metadata[
            "encryption-key-id"])
