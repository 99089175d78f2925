"""The payload codec: what Temporal stores is ciphertext under a key derived for it alone, and
what is not ours is never decoded into a value (a refusal marker the converter refuses)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    WorkflowSerializationContext,
)
from temporalio.exceptions import ApplicationError

from core.codec import (
    ENCODING,
    PAYLOAD_REFUSED,
    PayloadEncryptionCodec,
    data_converter,
    is_refusal,
)
from core.domain import CardSummary
from core.keyring import RECHECK_SECONDS, KeyFiles, KeyRing, MasterKey, encode_key
from core.metrics import PAYLOADS_REFUSED
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
    assert not any(b"card_abc" in value or b"4242" in value for value in marker.metadata.values())


async def test_the_converter_refuses_a_payload_in_clear_for_good(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, "durapay.codec"),
        pytest.raises(ApplicationError) as refused,
    ):
        await data_converter(KEY).decode([await _plain(CHARGE)], [ChargeInput])
    assert refused.value.type == PAYLOAD_REFUSED
    assert refused.value.non_retryable
    assert "not encrypted" in refused.value.message
    # Operators see it; nothing of the payload is in the log line.
    assert [r.getMessage() for r in caplog.records] == [
        "refused a Temporal payload for no workflow: not encrypted"
    ]


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
    forged = Payload(
        metadata={"encoding": ENCODING, "encryption-key-id": b"4242424242424242"}, data=b"\0" * 40
    )
    [marker] = await PayloadEncryptionCodec(KEY).decode([forged])
    assert is_refusal(marker)
    assert not any(b"4242" in value for value in marker.metadata.values())


@pytest.mark.parametrize("damage", ["flip-last-byte", "truncate", "empty"])
async def test_tampered_ciphertext_is_refused(damage: str) -> None:
    codec = PayloadEncryptionCodec(KEY)
    [stored] = await codec.encode([Payload(data=b"amount=2499")])
    stored.data = {
        "flip-last-byte": stored.data[:-1] + bytes([stored.data[-1] ^ 1]),
        "truncate": stored.data[:8],
        "empty": b"",
    }[damage]
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
        await data_converter(old).encode([CHARGE]), [ChargeInput]
    )
    assert value == CHARGE


async def test_payload_key_is_not_the_master_key() -> None:
    # Derived with its own label, so payload ciphertext is not card-vault ciphertext (and the
    # other way round): the master key itself does not open it.
    [stored] = await PayloadEncryptionCodec(KEY).encode([Payload(data=b"x")])
    with pytest.raises(InvalidTag):
        AESGCM(KEY).decrypt(
            stored.data[:12], stored.data[12:], stored.metadata["encryption-key-id"]
        )


def workflow_context(workflow_id: str, namespace: str = "default") -> WorkflowSerializationContext:
    return WorkflowSerializationContext(namespace=namespace, workflow_id=workflow_id)


def activity_context(
    workflow_id: str, activity_type: str, *, activity_id: str | None = None
) -> ActivitySerializationContext:
    return ActivitySerializationContext(
        namespace="default",
        activity_id=activity_id,
        activity_type=activity_type,
        activity_task_queue="q",
        workflow_id=workflow_id,
        workflow_type="PaymentIntentWorkflow",
        is_local=False,
    )


def refused_count(kind: str) -> float:
    return PAYLOADS_REFUSED.labels(kind=kind)._value.get()


async def test_a_payload_opens_only_in_the_workflow_it_was_written_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    converter = data_converter(KEY)
    [stored] = await converter.with_context(workflow_context("pi_a")).encode([CHARGE])
    [back] = await converter.with_context(workflow_context("pi_a")).decode([stored], [ChargeInput])
    assert back == CHARGE
    before = refused_count("wrong_place")
    for elsewhere in (
        workflow_context("pi_b"),
        workflow_context("pi_a", "other-namespace"),
        activity_context("pi_a", "authorize_card"),
    ):
        with (
            caplog.at_level(logging.WARNING, "durapay.codec"),
            pytest.raises(ApplicationError, match="another workflow or activity") as refused,
        ):
            await converter.with_context(elsewhere).decode([stored], [ChargeInput])
        assert refused.value.type == PAYLOAD_REFUSED
    with pytest.raises(ApplicationError, match="another workflow or activity"):
        await converter.decode([stored], [ChargeInput])  # no context at all
    # Logged with the place it was refused in, and counted.
    assert "refused a Temporal payload for workflow pi_b" in caplog.text
    assert refused_count("wrong_place") == before + 4


async def test_an_activity_payload_opens_only_in_that_activity_type_of_that_workflow() -> None:
    codec = PayloadEncryptionCodec(KEY)
    written = codec.with_context(activity_context("pi_a", "authorize_card"))
    [stored] = await written.encode([Payload(data=b"answer")])
    # The activity side knows the activity id; the workflow side may not: neither is bound.
    same = codec.with_context(activity_context("pi_a", "authorize_card", activity_id="7"))
    assert await same.decode([stored]) == [Payload(data=b"answer")]
    for elsewhere in (
        activity_context("pi_a", "refund_charge"),
        activity_context("pi_b", "authorize_card"),
        workflow_context("pi_a"),
    ):
        [marker] = await codec.with_context(elsewhere).decode([stored])
        assert is_refusal(marker)


async def test_a_schedules_input_opens_in_the_runs_it_starts_only() -> None:
    codec = PayloadEncryptionCodec(KEY)
    [stored] = await codec.with_context(workflow_context("durapay-sweep")).encode(
        [Payload(data=b"window")]
    )
    run = codec.with_context(workflow_context("durapay-sweep-2026-12-04T17:00:00Z"))
    assert await run.decode([stored]) == [Payload(data=b"window")]
    for elsewhere in ("durapay-sweep-x", "durapay-other-2026-12-04T17:00:00Z", "durapay-sweep-2"):
        [marker] = await codec.with_context(workflow_context(elsewhere)).decode([stored])
        assert is_refusal(marker)
    # A payment's payload does not open in a workflow named like a scheduled run of it.
    [payment] = await codec.with_context(workflow_context("pi_a")).encode([Payload(data=b"p")])
    [marker] = await codec.with_context(workflow_context("pi_a-2026-12-04T17:00:00Z")).decode(
        [payment]
    )
    assert is_refusal(marker)


async def test_the_display_codec_opens_a_bound_payload_by_the_place_it_names() -> None:
    [stored] = (
        await PayloadEncryptionCodec(KEY)
        .with_context(workflow_context("pi_a"))
        .encode([Payload(data=b"shown")])
    )
    assert await PayloadEncryptionCodec(KEY, strict=False).decode([stored]) == [
        Payload(data=b"shown")
    ]
    # A place rewritten in the metadata does not authenticate, even for display.
    stored.metadata["encryption-context"] = b"workflow\x00default\x00pi_b"
    [marker] = await PayloadEncryptionCodec(KEY, strict=False).decode([stored])
    assert is_refusal(marker)
    [marker] = (
        await PayloadEncryptionCodec(KEY).with_context(workflow_context("pi_b")).decode([stored])
    )
    assert is_refusal(marker)


async def test_codecs_made_for_a_context_follow_the_processes_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    ring = KeyRing(old)
    codec = PayloadEncryptionCodec.from_key_ring(ring)
    bound = codec.with_context(workflow_context("pi_a"))
    [before] = await bound.encode([Payload(data=b"x")])
    ring._install(new, [old])  # what a reload does
    ring.generation += 1
    [after] = await codec.with_context(workflow_context("pi_a")).encode([Payload(data=b"y")])
    assert after.metadata["encryption-key-id"] != before.metadata["encryption-key-id"]
    assert await bound.decode([before, after]) == [Payload(data=b"x"), Payload(data=b"y")]


async def test_a_running_codec_stops_decrypting_with_a_dropped_key(tmp_path: Path) -> None:
    """`durapay keys drop` rewrites the key files while a codec listener or worker runs: the
    codec knows the dropped key's id, so nothing forces a reload, yet within the ring's bound
    it refuses payloads under that key and keeps decrypting under the others."""
    old, new = os.urandom(32), os.urandom(32)
    now = [0.0]
    (tmp_path / "master.key").write_text(encode_key(old))
    (tmp_path / "master.key").chmod(0o600)
    files = KeyFiles(tmp_path)
    files.rotate(new)
    codec = PayloadEncryptionCodec.from_key_ring(
        KeyRing.from_source(KeyFiles(tmp_path), clock=lambda: now[0])
    ).with_context(workflow_context("pi_a"))
    [under_old] = (
        await PayloadEncryptionCodec(old)
        .with_context(workflow_context("pi_a"))
        .encode([Payload(data=b"old")])
    )
    assert await codec.decode([under_old]) == [Payload(data=b"old")]

    assert files.drop(MasterKey(old).key_id)
    now[0] += RECHECK_SECONDS
    [marker] = await codec.decode([under_old])
    assert is_refusal(marker)
    [under_new] = await codec.encode([Payload(data=b"new")])
    assert await codec.decode([under_new]) == [Payload(data=b"new")]
