"""Encrypted Temporal payloads: what workflows and activities exchange is stored in Temporal's
history as AES-256-GCM ciphertext, readable only with Durapay's master key (through this codec
in our processes, or the codec endpoint for the Web UI).

No card number ever reaches a payload (the vault token does); this keeps the rest — amounts,
merchant ids, decline codes, webhook URLs — out of Temporal's database in clear too.

The encryption is also the workers' proof of origin: whoever reaches Temporal's port can send
an Update, but only a holder of the master key can send one our workers act on. A payload that
is not ours is never decoded into a value: the codec turns it into a *refusal marker* and the
payload converter refuses the marker (`PayloadRefused`), so the message is rejected before any
code of ours sees it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    PayloadCodec,
)
from temporalio.exceptions import ApplicationError

from core.keyring import KeyRing, derive_key

log = logging.getLogger("durapay.codec")

ENCODING = b"binary/encrypted"
# What decode makes of a payload that is not ours. It carries only a short reason, never a byte
# of the refused payload.
REFUSED_ENCODING = b"binary/durapay-refused"
REFUSAL_REASON = "durapay-refusal"
PAYLOAD_REFUSED = "PayloadRefused"
# Names the key a payload is encrypted under, in clear (`durapay keys status` reads it).
KEY_ID_METADATA = "encryption-key-id"
_NONCE_BYTES = 12


class PayloadKey:
    """One master key's payload key (HKDF, its own label: never the key that encrypts cards
    and secrets at rest) and the id that names it in each payload's metadata."""

    def __init__(self, master_key: bytes) -> None:
        key = derive_key(master_key, b"durapay temporal payloads v1")
        self.aead = AESGCM(key)
        # Names the key without revealing it: a history written under another master key says
        # so instead of failing with a bare decryption error.
        self.key_id = hashlib.sha256(key).hexdigest()[:16].encode()


class PayloadEncryptionCodec(PayloadCodec):
    """Encrypts every payload whole (metadata and data) under the current master key; decrypts
    what carries the id of the current key or of a retired one (key rotation).

    Decode never raises: inside a worker it runs on a whole workflow activation before the
    workflow sees it, and an exception there fails the workflow *task*, retried for ever, which
    would wedge the payment. A payload in clear, under a key we do not hold, or whose
    authentication fails becomes a refusal marker instead (see `RefusingPayloadConverter`).

    `strict=False` is for display only (the Web UI's codec endpoint): payloads in clear pass
    through unchanged so histories stay readable. Workers, the API and the CLI are strict.
    """

    def __init__(self, master_key: bytes, retired_master_keys: Sequence[bytes] = (), *,
                 strict: bool = True) -> None:
        self._strict = strict
        self._ring: KeyRing | None = None
        self._generation = 0
        self._use(master_key, retired_master_keys)

    @classmethod
    def from_key_ring(cls, ring: KeyRing, *, strict: bool = True) -> PayloadEncryptionCodec:
        """The codec of a process's key ring: it follows the ring when the ring reloads (the
        local stack's key files, rewritten by `durapay keys rotate` while processes run)."""
        codec = cls(ring.current.material, [k.material for k in ring.retired], strict=strict)
        codec._ring, codec._generation = ring, ring.generation
        return codec

    def _use(self, master_key: bytes, retired_master_keys: Sequence[bytes]) -> None:
        current = PayloadKey(master_key)
        self._keys = {key.key_id: key for key in
                      (*(PayloadKey(k) for k in retired_master_keys), current)}
        self._current = current

    def _follow_ring(self) -> None:
        ring = self._ring
        if ring is not None and ring.generation != self._generation:
            self._generation = ring.generation
            self._use(ring.current.material, [k.material for k in ring.retired])

    def _key(self, key_id: bytes) -> PayloadKey | None:
        self._follow_ring()
        key = self._keys.get(key_id)
        # Another process may already write under a key this one has not loaded yet.
        if key is None and self._ring is not None and self._ring.refresh():
            self._follow_ring()
            key = self._keys.get(key_id)
        return key

    @property
    def key_id(self) -> bytes:
        """The id of the key new payloads are encrypted under."""
        self._follow_ring()
        return self._current.key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(p) for p in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        self._follow_ring()
        key = self._current
        nonce = os.urandom(_NONCE_BYTES)
        data = nonce + key.aead.encrypt(nonce, payload.SerializeToString(), key.key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key.key_id}, data=data)

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return refusal("not encrypted") if self._strict else payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"")
        key = self._key(key_id)
        if key is None:
            # Not the sender's key id: metadata is the sender's text, and none of it is copied.
            return refusal(f"encrypted under a key that is not ours (ours: "
                           f"{self.key_id.decode()}): another DURAPAY_MASTER_KEY?")
        try:
            plain = key.aead.decrypt(payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:],
                                     key_id)
            return Payload.FromString(plain)
        except (InvalidTag, ValueError, DecodeError):
            return refusal("failed authentication")


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
        # Operators' signal that someone reached Temporal with a client of their own (or that
        # a process runs with another DURAPAY_MASTER_KEY).
        log.warning("refused a Temporal payload: %s", reason)
        raise ApplicationError(f"payload refused: {reason}; only payloads encrypted under "
                               "Durapay's master key are accepted", type=PAYLOAD_REFUSED,
                               non_retryable=True)


class RefusingPayloadConverter(CompositePayloadConverter):
    """Temporal's default converters plus the refusal of markers (nullary, as the SDK needs)."""

    def __init__(self) -> None:
        # First: it never produces a payload, so it costs nothing on the way out.
        super().__init__(RefusedPayloadConverter(),
                         *DefaultPayloadConverter.default_encoding_payload_converters)


def data_converter(master_key: bytes | KeyRing,
                   retired_master_keys: Sequence[bytes] = ()) -> DataConverter:
    """The converter every Durapay Temporal client uses (API, workers, CLI, tests): strict.
    Given a key ring (as every process passes its own), it decrypts under each of its keys."""
    codec = (PayloadEncryptionCodec.from_key_ring(master_key) if isinstance(master_key, KeyRing)
             else PayloadEncryptionCodec(master_key, retired_master_keys))
    return dataclasses.replace(
        DataConverter.default, payload_converter_class=RefusingPayloadConverter,
        payload_codec=codec)
