"""Encrypted Temporal payloads: what workflows and activities exchange is stored in Temporal's
history as AES-256-GCM ciphertext, readable only with Durapay's master key (through this codec
in our processes, or the codec endpoint for the Web UI).

No card number ever reaches a payload (the vault token does); this keeps the rest — amounts,
merchant ids, decline codes, webhook URLs — out of Temporal's database in clear too.

The encryption is also the workers' proof of origin. Whoever reaches Temporal's port can send
an Update, but only a holder of the master key can send one our workers act on. And every
ciphertext is bound to **where it was written**: the SDK hands the codec a serialization
context (the namespace and workflow id of a workflow's start input, Updates, signals, queries
and results; the workflow id and activity type of an activity's input and result), which goes
into the AES-GCM associated data. A payload copied out of one payment's history therefore fails
authentication in any other workflow, and an activity's payload anywhere but in that
activity type of that workflow. Inside one workflow, each operation's input also names the
Update it was issued as (`workflows/payment_messages.py`), so it cannot be replayed under
another Update name or id.

A payload that is not ours is never decoded into a value: the codec turns it into a *refusal
marker*, logs and counts it, and the payload converter refuses the marker (`PayloadRefused`),
so the message is rejected before any code of ours sees it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    JSONPlainPayloadConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)
from temporalio.exceptions import ApplicationError

from core.keyring import KeyRing, derive_key
from core.metrics import count_refused_payload
from core.payload_json import json_payload_converter

log = logging.getLogger("durapay.codec")

ENCODING = b"binary/encrypted"
# What decode makes of a payload that is not ours. It carries only a short reason, never a byte
# of the refused payload.
REFUSED_ENCODING = b"binary/durapay-refused"
REFUSAL_REASON = "durapay-refusal"
PAYLOAD_REFUSED = "PayloadRefused"
# Names the key a payload is encrypted under, in clear (`durapay keys status` reads it).
KEY_ID_METADATA = "encryption-key-id"
# Names, in clear, the place a payload was bound to. Only the Web UI's display codec reads it
# (the UI does not say which workflow a payload comes from); a strict codec authenticates
# against the place it is decoding for and reads this only to word its refusal.
CONTEXT_METADATA = "encryption-context"
_NONCE_BYTES = 12
# The associated data's version: a payload bound under another layout never authenticates.
_AAD_PREFIX = b"durapay payload v2\x00"
# A Schedule's action input is encoded for the schedule's workflow id, and each run it starts
# gets that id plus "-<scheduled time>" (Temporal's own naming, RFC 3339 in UTC). Only our
# schedules' ids (`workers/schedules.py`) qualify: never a payment's or a delivery's.
_SCHEDULED_RUN_ID = re.compile(
    r"^(?P<base>durapay-[a-z0-9-]+)-\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
)


def context_label(context: SerializationContext | None) -> str:
    """The place a payload belongs to, as bound into its associated data."""
    if isinstance(context, WorkflowSerializationContext):
        return f"workflow\x00{context.namespace}\x00{context.workflow_id}"
    if isinstance(context, ActivitySerializationContext):
        # activity_type is set on both sides for activities a workflow starts (the only ones we
        # run); the activity id is not (a workflow leaves it to the SDK's sequence number).
        return (
            f"activity\x00{context.namespace}\x00{context.workflow_id or ''}\x00"
            f"{context.activity_type or ''}"
        )
    if context is None:
        return "unbound"
    return f"{type(context).__name__}\x00{context!r}"


def _scheduled_base_label(context: SerializationContext | None) -> str | None:
    """For a run a Schedule started: the label its action input was encoded under."""
    if isinstance(context, WorkflowSerializationContext):
        match = _SCHEDULED_RUN_ID.match(context.workflow_id)
        if match is not None:
            return context_label(dataclasses.replace(context, workflow_id=match["base"]))
    return None


class PayloadKey:
    """One master key's payload key (HKDF, its own label: never the key that encrypts cards
    and secrets at rest) and the id that names it in each payload's metadata."""

    def __init__(self, master_key: bytes) -> None:
        key = derive_key(master_key, b"durapay temporal payloads v1")
        self.aead = AESGCM(key)
        # Names the key without revealing it: a history written under another master key says
        # so instead of failing with a bare decryption error.
        self.key_id = hashlib.sha256(key).hexdigest()[:16].encode()


class _PayloadKeys:
    """The payload keys of a process, shared by a codec and every copy it makes for a context,
    so a rotation is followed once per process, not once per workflow activation."""

    def __init__(self, master_key: bytes, retired_master_keys: Sequence[bytes]) -> None:
        self.ring: KeyRing | None = None
        self.generation = 0
        self.use(master_key, retired_master_keys)

    def use(self, master_key: bytes, retired_master_keys: Sequence[bytes]) -> None:
        current = PayloadKey(master_key)
        keys = {key.key_id: key for key in (*(PayloadKey(k) for k in retired_master_keys), current)}
        # Assigned together, so a reader sees the old set or the new one.
        self.keys, self.current = keys, current

    def follow_ring(self) -> None:
        ring = self.ring
        # maybe_refresh: a key dropped from the ring's files stops decrypting within its bound,
        # without a restart (a long-running codec listener, workers).
        if ring is not None and (ring.maybe_refresh() or ring.generation != self.generation):
            self.generation = ring.generation
            self.use(ring.current.material, [k.material for k in ring.retired])

    def find(self, key_id: bytes) -> PayloadKey | None:
        self.follow_ring()
        key = self.keys.get(key_id)
        # Another process may already write under a key this one has not loaded yet.
        if key is None and self.ring is not None and self.ring.refresh():
            self.follow_ring()
            key = self.keys.get(key_id)
        return key


class PayloadEncryptionCodec(PayloadCodec, WithSerializationContext):
    """Encrypts every payload whole (metadata and data) under the current master key, bound to
    its serialization context; decrypts what carries the id of the current key or of a retired
    one (key rotation) and authenticates for the context it is decoded in.

    Decode never raises: inside a worker it runs on a whole workflow activation before the
    workflow sees it, and an exception there fails the workflow *task*, retried for ever, which
    would wedge the payment. A payload in clear, under a key we do not hold, bound to another
    place, or whose authentication fails becomes a refusal marker instead (see
    `RefusingPayloadConverter`).

    `strict=False` is for display only (the Web UI's codec endpoint): payloads in clear pass
    through unchanged, and a payload is authenticated for the place its metadata names, so
    histories stay readable without the UI telling which workflow they come from. Workers, the
    API and the CLI are strict.
    """

    def __init__(
        self, master_key: bytes, retired_master_keys: Sequence[bytes] = (), *, strict: bool = True
    ) -> None:
        self._strict = strict
        self._keys = _PayloadKeys(master_key, retired_master_keys)
        self._context: SerializationContext | None = None

    @classmethod
    def from_key_ring(cls, ring: KeyRing, *, strict: bool = True) -> PayloadEncryptionCodec:
        """The codec of a process's key ring: it follows the ring when the ring reloads (the
        local stack's key files, rewritten by `durapay keys rotate` while processes run)."""
        codec = cls(ring.current.material, [k.material for k in ring.retired], strict=strict)
        codec._keys.ring, codec._keys.generation = ring, ring.generation
        return codec

    def with_context(self, context: SerializationContext) -> PayloadEncryptionCodec:
        """A copy bound to `context` (the SDK asks for one per operation): it shares the keys."""
        bound = copy.copy(self)
        bound._context = context
        return bound

    @property
    def key_id(self) -> bytes:
        """The id of the key new payloads are encrypted under."""
        self._keys.follow_ring()
        return self._keys.current.key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(p) for p in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        self._keys.follow_ring()
        key = self._keys.current
        label = context_label(self._context)
        nonce = os.urandom(_NONCE_BYTES)
        data = nonce + key.aead.encrypt(
            nonce, payload.SerializeToString(), _associated_data(key.key_id, label)
        )
        return Payload(
            metadata={
                "encoding": ENCODING,
                KEY_ID_METADATA: key.key_id,
                CONTEXT_METADATA: label.encode(),
            },
            data=data,
        )

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return self._refuse("not_encrypted", "not encrypted") if self._strict else payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"")
        key = self._keys.find(key_id)
        if key is None:
            # Not the sender's key id: metadata is the sender's text, and none of it is copied.
            return self._refuse(
                "unknown_key",
                "encrypted under a key that is not ours (ours: "
                f"{self.key_id.decode()}): another DURAPAY_MASTER_KEY?",
            )
        claimed = payload.metadata.get(CONTEXT_METADATA, b"").decode(errors="replace")
        labels = (
            [claimed]
            if not self._strict
            else [context_label(self._context), _scheduled_base_label(self._context)]
        )
        for label in labels:
            if label is None:
                continue
            try:
                plain = key.aead.decrypt(
                    payload.data[:_NONCE_BYTES],
                    payload.data[_NONCE_BYTES:],
                    _associated_data(key_id, label),
                )
                return Payload.FromString(plain)
            except (InvalidTag, ValueError, DecodeError):
                continue
        if self._strict and claimed != context_label(self._context):
            return self._refuse("wrong_place", "written for another workflow or activity")
        return self._refuse("failed_authentication", "failed authentication")

    def _refuse(self, kind: str, reason: str) -> Payload:
        """A refusal marker, logged and counted here, where the place is known: operators'
        signal that someone reached Temporal with a client of their own (or that a process
        runs with another DURAPAY_MASTER_KEY)."""
        if self._strict:
            count_refused_payload(kind)
            log.warning("refused a Temporal payload for %s: %s", _describe(self._context), reason)
        return refusal(reason)


def _associated_data(key_id: bytes, label: str) -> bytes:
    return _AAD_PREFIX + key_id + b"\x00" + label.encode()


def _describe(context: SerializationContext | None) -> str:
    if isinstance(context, WorkflowSerializationContext):
        return f"workflow {context.workflow_id}"
    if isinstance(context, ActivitySerializationContext):
        return f"activity {context.activity_type} of workflow {context.workflow_id}"
    return "no workflow"


def refusal(reason: str) -> Payload:
    """The marker a refused payload becomes: its reason, nothing of its content."""
    return Payload(metadata={"encoding": REFUSED_ENCODING, REFUSAL_REASON: reason.encode()})


def is_refusal(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == REFUSED_ENCODING


class RefusedPayloadConverter(EncodingPayloadConverter):
    """Refuses to turn a refusal marker into a value, with a non-retryable `PayloadRefused`.

    Where the SDK converts, that error does the right thing: an Update's argument is converted
    before its validator, so the Update is rejected (nothing reaches history); a workflow's
    start input fails the run at once (not the task), so the next legitimate update-with-start
    opens a fresh run; an activity's input fails the activity before its code runs.
    """

    @property
    def encoding(self) -> str:
        return REFUSED_ENCODING.decode()

    def to_payload(self, value: Any) -> Payload | None:
        return None  # never produces one: markers come only from the codec's decode

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        reason = payload.metadata.get(REFUSAL_REASON, b"refused").decode(errors="replace")
        raise ApplicationError(
            f"payload refused: {reason}; only payloads encrypted under "
            "Durapay's master key are accepted",
            type=PAYLOAD_REFUSED,
            non_retryable=True,
        )


class RefusingPayloadConverter(CompositePayloadConverter):
    """Temporal's default converters plus the refusal of markers (nullary, as the SDK needs)."""

    def __init__(self) -> None:
        # First: it never produces a payload, so it costs nothing on the way out. The SDK's
        # JSON converter is replaced by the same one decoding dataclasses faster.
        super().__init__(
            RefusedPayloadConverter(),
            *(
                json_payload_converter()
                if isinstance(converter, JSONPlainPayloadConverter)
                else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            ),
        )


def data_converter(
    master_key: bytes | KeyRing, retired_master_keys: Sequence[bytes] = ()
) -> DataConverter:
    """The converter every Durapay Temporal client uses (API, workers, CLI, tests): strict.
    Given a key ring (as every process passes its own), it decrypts under each of its keys."""
    codec = (
        PayloadEncryptionCodec.from_key_ring(master_key)
        if isinstance(master_key, KeyRing)
        else PayloadEncryptionCodec(master_key, retired_master_keys)
    )
    return dataclasses.replace(
        DataConverter.default, payload_converter_class=RefusingPayloadConverter, payload_codec=codec
    )
