"""Encrypted Temporal payloads: what workflows and activities exchange is stored in Temporal's
history as AES-256-GCM ciphertext, readable only with Durapay's master key (through this codec
in our processes, or the API's codec endpoint for the Web UI).

No card number ever reaches a payload (the vault token does); this keeps the rest — amounts,
merchant ids, decline codes, webhook URLs — out of Temporal's database in clear too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, PayloadCodec

ENCODING = b"binary/encrypted"
_NONCE_BYTES = 12


class PayloadEncryptionCodec(PayloadCodec):
    """Encrypts every payload whole (metadata and data); decrypts what carries our key id.

    The key is derived from the master key (HKDF, its own label), so it never equals the key
    that encrypts cards and secrets at rest. Payloads that are not ours (written before the
    codec existed) pass through decode unchanged, so older histories stay readable.
    """

    def __init__(self, master_key: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"durapay temporal payloads v1").derive(master_key)
        self._aead = AESGCM(key)
        # Names the key without revealing it: a history written under another master key says
        # so instead of failing with a bare decryption error.
        self.key_id = hashlib.sha256(key).hexdigest()[:16].encode()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(p) for p in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(_NONCE_BYTES)
        data = nonce + self._aead.encrypt(nonce, payload.SerializeToString(), self.key_id)
        return Payload(metadata={"encoding": ENCODING, "encryption-key-id": self.key_id},
                       data=data)

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get("encryption-key-id", b"")
        if key_id != self.key_id:
            raise ValueError(f"payload encrypted under key {key_id.decode()!r}, not ours "
                             f"({self.key_id.decode()!r}): another DURAPAY_MASTER_KEY?")
        plain = self._aead.decrypt(payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:],
                                   key_id)
        return Payload.FromString(plain)


def data_converter(master_key: bytes) -> DataConverter:
    """The converter every Durapay Temporal client uses (API, workers, CLI, tests)."""
    return dataclasses.replace(DataConverter.default,
                               payload_codec=PayloadEncryptionCodec(master_key))
