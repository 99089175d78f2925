"""The payload codec: what Temporal stores is ciphertext under a key derived for it alone, and
what is not ours is never decoded into a value (a refusal marker the converter refuses)."""

from __future__ import annotations

import logging
import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from core.codec import (
    ENCODING,
    PAYLOAD_REFUSED,
    PayloadEncryptionCodec,
    data_converter,
    is_refusal,
)
from core.domain import CardSummary
from workflows.payment_intent import ChargeInput

KEY = os.urandom(32)
CHARGE = ChargeInput("card_abc", CardSummary("visa", "4242", 12, 2030))


async def _plain(value: object) -> Payload:
    [payload] = await DataConverter.default.encode([value])  # what a client without codec sends
    return payload


async def test_payloads_round_trip_and_are_unreadable_at_rest() -> None:
    converter = data_converter(KEY)
    [stored] = await converter.encode([CHARGE])
    assert stored.metadata["encoding"] == ENCODING
    assert b"4242" not in stored.data and b"card_abc" not in stored.data
    [back] = await converter.decode([stored], [ChargeInput])
    assert back == CHARGE


async def test_a_payload_in_clear_becomes_a_marker_that_keeps_nothing_of_it() -> None:
    [marker] = await PayloadEncryptionCodec(KEY).decode([await _plain(CHARGE)])
    assert is_refusal(marker)
    assert marker.data == b""
    assert not any(b"card_abc" in value or b"4242" in value
                   for value in marker.metadata.values())


async def test_the_converter_refuses_a_payload_in_clear_for_good(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "durapay.codec"), \
            pytest.raises(ApplicationError) as refused:
        await data_converter(KEY).decode([await _plain(CHARGE)], [ChargeInput])
    assert refused.value.type == PAYLOAD_REFUSED
    assert refused.value.non_retryable
    assert "not encrypted" in refused.value.message
    # Operators see it; nothing of the payload is in the log line.
    assert [r.getMessage() for r in caplog.records] == [
        "refused a Temporal payload: not encrypted"]


async def test_the_display_codec_passes_payloads_in_clear_through() -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')
    assert await PayloadEncryptionCodec(KEY, strict=False).decode([plain]) == [plain]


async def test_another_master_key_is_refused_and_named() -> None:
    [stored] = await PayloadEncryptionCodec(KEY).encode([Payload(data=b"x")])
    for strict in (True, False):  # ciphertext we cannot open is never shown as if it were clear
        [marker] = await PayloadEncryptionCodec(os.urandom(32), strict=strict).decode([stored])
        assert is_refusal(marker)
    with pytest.raises(ApplicationError, match="another DURAPAY_MASTER_KEY"):
        await data_converter(os.urandom(32)).decode([stored])


async def test_a_forged_key_id_is_not_copied_into_the_refusal() -> None:
    forged = Payload(metadata={"encoding": ENCODING, "encryption-key-id": b"4242424242424242"},
                     data=b"\0" * 40)
    [marker] = await PayloadEncryptionCodec(KEY).decode([forged])
    assert is_refusal(marker)
    assert not any(b"4242" in value for value in marker.metadata.values())


@pytest.mark.parametrize("damage", ["flip-last-byte", "truncate", "empty"])
async def test_tampered_ciphertext_is_refused(damage: str) -> None:
    codec = PayloadEncryptionCodec(KEY)
    [stored] = await codec.encode([Payload(data=b"amount=2499")])
    stored.data = {"flip-last-byte": stored.data[:-1] + bytes([stored.data[-1] ^ 1]),
                   "truncate": stored.data[:8], "empty": b""}[damage]
    [marker] = await codec.decode([stored])
    assert is_refusal(marker)
    with pytest.raises(ApplicationError, match="failed authentication"):
        await data_converter(KEY).decode([stored])


async def test_retired_keys_decrypt_and_the_current_key_encrypts() -> None:
    old = os.urandom(32)
    [written_before] = await PayloadEncryptionCodec(old).encode([Payload(data=b"before")])
    rotated = PayloadEncryptionCodec(KEY, [old])
    assert await rotated.decode([written_before]) == [Payload(data=b"before")]
    [written_after] = await rotated.encode([Payload(data=b"after")])
    assert written_after.metadata["encryption-key-id"] == PayloadEncryptionCodec(KEY).key_id
    assert await PayloadEncryptionCodec(KEY).decode([written_after]) == [Payload(data=b"after")]
    # Through the converter every process uses, too.
    [value] = await data_converter(KEY, [old]).decode(
        await data_converter(old).encode([CHARGE]), [ChargeInput])
    assert value == CHARGE


async def test_payload_key_is_not_the_master_key() -> None:
    # Derived with its own label, so payload ciphertext is not card-vault ciphertext (and the
    # other way round): the master key itself does not open it.
    [stored] = await PayloadEncryptionCodec(KEY).encode([Payload(data=b"x")])
    with pytest.raises(InvalidTag):
        AESGCM(KEY).decrypt(stored.data[:12], stored.data[12:], stored.metadata[
            "encryption-key-id"])
