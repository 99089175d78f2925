"""Encryption at rest (AES-256-GCM under the key ring) and the HMAC request-signing scheme.

The signing functions are shared by the API (verifying) and the merchant client (signing), so
the canonical string is defined exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.keyring import KEY_BYTES, KEY_ID_BYTES, KeyRing, MasterKey, Purpose, derive_key
from core.vault_epochs import CardNumberDeleted, EpochKeys, epoch_name

__all__ = ["CardNumberDeleted"]  # raised by VaultCipher.decrypt; defined with the keys

SIGNATURE_VERSION = "v1"
# Ciphertexts at rest: version byte, master key id, nonce, then AES-GCM's output.
FORMAT_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + KEY_ID_BYTES
_PREFIX_BYTES = _HEADER_BYTES + _NONCE_BYTES
# Card numbers: version byte, master key id, epoch (its end, unix seconds), nonce, then AES-GCM's
# output under a key of both the master key and the epoch's key (`VaultCipher`).
VAULT_FORMAT_VERSION = 2
_EPOCH_BYTES = 8
_VAULT_HEADER_BYTES = _HEADER_BYTES + _EPOCH_BYTES
_VAULT_PREFIX_BYTES = _VAULT_HEADER_BYTES + _NONCE_BYTES


class UnknownMasterKey(LookupError):
    """A ciphertext under a master key that is not in this process's ring."""


class Cipher:
    """AES-256-GCM at rest for one purpose, under the key ring's current master key.

    A ciphertext is `version (1) | master key id (8) | nonce (12) | ciphertext and tag`. It is
    encrypted with the purpose's HKDF subkey of that master key, so a vault ciphertext never
    decrypts as a webhook secret; the header and `context` are bound as associated data.
    Binding the context (e.g. the key's public id, the token id) means a ciphertext copied onto
    another row does not decrypt, so a database-level swap cannot impersonate another merchant
    or card.

    Ciphertexts from before key ids (`nonce | ciphertext`, under a master key used raw) are
    still read, under the current key or a retired one, and never written: `durapay keys
    rotate` rewrites them (`durapay keys status` counts them as `legacy`).
    """

    def __init__(self, keys: KeyRing, purpose: Purpose) -> None:
        self._keys = keys
        self.purpose = purpose

    def encrypt(self, plaintext: bytes, *, context: str) -> bytes:
        # A ring read from the local stack's files follows a rotation made meanwhile, so rows
        # written after it are already under the new key.
        self._keys.refresh()
        key = self._keys.current
        header = _header(key)
        nonce = os.urandom(_NONCE_BYTES)
        return (
            header
            + nonce
            + key.aead(self.purpose).encrypt(nonce, plaintext, header + context.encode())
        )

    def decrypt(self, blob: bytes, *, context: str) -> bytes:
        """The plaintext; raises InvalidTag for a ciphertext of another row or purpose, or a
        damaged one, and UnknownMasterKey for one under a key this ring does not hold."""
        self._keys.maybe_refresh()  # a key dropped meanwhile no longer decrypts
        key = self._keys.find(key_id_bytes(blob)) if _has_header(blob) else None
        if key is not None:
            header, nonce = blob[:_HEADER_BYTES], blob[_HEADER_BYTES:_PREFIX_BYTES]
            try:
                return key.aead(self.purpose).decrypt(
                    nonce, blob[_PREFIX_BYTES:], header + context.encode()
                )
            except InvalidTag:
                pass  # one legacy ciphertext in 2^72 starts like a header: tried below
        for legacy in self._keys.keys:
            try:
                return legacy.legacy_aead.decrypt(
                    blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], context.encode()
                )
            except (InvalidTag, ValueError):
                continue
        if key is None and _has_header(blob):
            raise UnknownMasterKey(
                f"ciphertext under master key {key_id_bytes(blob).hex()}, which is neither the "
                f"current key ({self._keys.current.key_id}) nor a retired one: add it to "
                "DURAPAY_RETIRED_MASTER_KEYS"
            )
        raise InvalidTag()

    def is_current(self, blob: bytes) -> bool:
        """Whether `blob` is already in this format under the current master key."""
        return blob[:_HEADER_BYTES] == _header(self._keys.current)

    def reencrypted(self, blob: bytes, *, context: str) -> bytes | None:
        """`blob` under the current master key, or None if it already is."""
        if self.is_current(blob):
            return None
        return self.encrypt(self.decrypt(blob, context=context), context=context)


class VaultCipher:
    """The card vault's encryption: under the ring's current master key AND the current vault
    epoch's key (core/vault_epochs.py), so that destroying the epoch's key deletes every copy
    of its card numbers (dead row versions, the WAL, backups) for good, even for whoever holds
    the master key; and whoever holds only the epoch keys holds nothing either.

    A ciphertext is `version 2 (1) | master key id (8) | epoch (8) | nonce (12) | ciphertext and
    tag`, under AES-256-GCM with the key HKDF-SHA256(master key's vault subkey ‖ epoch key,
    info = label ‖ epoch); the header and the token id are bound as associated data, as
    `Cipher` binds them. Card numbers written before epochs (`Cipher`'s formats, under the
    master key alone) are still read; they leave the vault within the day like any card
    number, and `durapay keys rotate` rewrites any still held into this format.
    """

    purpose = Purpose.VAULT

    def __init__(self, keys: KeyRing, epochs: EpochKeys) -> None:
        self._keys = keys
        self.epochs = epochs
        self._before_epochs = Cipher(keys, Purpose.VAULT)

    def encrypt(self, plaintext: bytes, *, context: str) -> bytes:
        self._keys.refresh()  # as `Cipher.encrypt`: a rotation made meanwhile
        epoch, epoch_key = self.epochs.current()
        return _seal(self._keys.current, epoch, epoch_key, plaintext, context)

    def decrypt(self, blob: bytes, *, context: str) -> bytes:
        """The card number; raises CardNumberDeleted once its epoch key is destroyed, and as
        `Cipher.decrypt` otherwise (InvalidTag, UnknownMasterKey)."""
        if not _is_vault_blob(blob):
            return self._before_epochs.decrypt(blob, context=context)
        key = self._keys.find(key_id_bytes(blob))
        if key is None:
            try:  # one ciphertext from before key ids in 256 starts with this version byte
                return self._before_epochs.decrypt(blob, context=context)
            except InvalidTag:
                raise UnknownMasterKey(
                    f"card number under master key {key_id_bytes(blob).hex()}, which this "
                    "ring does not hold"
                ) from None
        epoch = epoch_of(blob)
        epoch_key = self.epochs.find(epoch)
        if epoch_key is None:
            raise CardNumberDeleted(f"the key of vault epoch {epoch_name(epoch)} is destroyed")
        header = blob[:_VAULT_HEADER_BYTES]
        return vault_epoch_aead(key, epoch, epoch_key).decrypt(
            blob[_VAULT_HEADER_BYTES:_VAULT_PREFIX_BYTES],
            blob[_VAULT_PREFIX_BYTES:],
            header + context.encode(),
        )

    def is_current(self, blob: bytes) -> bool:
        """Whether `blob` is already in this format under the current master key."""
        return blob[:_HEADER_BYTES] == current_vault_header(self._keys)

    def reencrypted(self, blob: bytes, *, context: str) -> bytes | None:
        """`blob` under the current master key, in its own epoch (a rotation must not extend a
        card number's life); None if it already is. One from before epochs goes into the
        current epoch. Raises CardNumberDeleted for one whose epoch key is destroyed."""
        if self.is_current(blob):
            return None
        plaintext = self.decrypt(blob, context=context)
        if not _is_vault_blob(blob) or self._keys.find(key_id_bytes(blob)) is None:
            return self.encrypt(plaintext, context=context)
        epoch = epoch_of(blob)
        epoch_key = self.epochs.find(epoch)
        if epoch_key is None:
            raise CardNumberDeleted(f"the key of vault epoch {epoch_name(epoch)} is destroyed")
        self._keys.refresh()
        return _seal(self._keys.current, epoch, epoch_key, plaintext, context)


def vault_epoch_aead(key: MasterKey, epoch: int, epoch_key: bytes) -> AESGCM:
    """The AES-GCM key of one epoch's card numbers under one master key: neither key alone
    gives it."""
    return AESGCM(
        derive_key(
            key.subkey(Purpose.VAULT) + epoch_key,
            b"durapay vault epoch v1: " + epoch.to_bytes(_EPOCH_BYTES, "big"),
            KEY_BYTES,
        )
    )


def vault_header(key: MasterKey, epoch: int) -> bytes:
    return current_vault_prefix(key) + epoch.to_bytes(_EPOCH_BYTES, "big")


def current_vault_prefix(key: MasterKey) -> bytes:
    return bytes([VAULT_FORMAT_VERSION]) + key.id_bytes


def current_vault_header(keys: KeyRing) -> bytes:
    """The first bytes of every card number under the ring's current key (for SQL filters)."""
    return current_vault_prefix(keys.current)


def epoch_of(blob: bytes) -> int:
    """The epoch a card number's ciphertext names (meaningful only in the vault's format)."""
    return int.from_bytes(blob[_HEADER_BYTES:_VAULT_HEADER_BYTES], "big")


def _seal(key: MasterKey, epoch: int, epoch_key: bytes, plaintext: bytes, context: str) -> bytes:
    header = vault_header(key, epoch)
    nonce = os.urandom(_NONCE_BYTES)
    return (
        header
        + nonce
        + vault_epoch_aead(key, epoch, epoch_key).encrypt(
            nonce, plaintext, header + context.encode()
        )
    )


def _is_vault_blob(blob: bytes) -> bool:
    return len(blob) >= _VAULT_PREFIX_BYTES + _TAG_BYTES and blob[0] == VAULT_FORMAT_VERSION


def key_id_bytes(blob: bytes) -> bytes:
    """The master key id a ciphertext names (meaningful only if it has a header)."""
    return blob[1:_HEADER_BYTES]


def current_header(keys: KeyRing) -> bytes:
    """The first bytes of every ciphertext under the ring's current key (for SQL filters)."""
    return _header(keys.current)


def _header(key: MasterKey) -> bytes:
    return bytes([FORMAT_VERSION]) + key.id_bytes


def _has_header(blob: bytes) -> bool:
    return len(blob) >= _PREFIX_BYTES + _TAG_BYTES and blob[0] == FORMAT_VERSION


def new_key_pair() -> tuple[str, str]:
    """A merchant's public key (identifies) and secret key (signs, shown once)."""
    return f"pk_test_{secrets.token_hex(16)}", f"sk_test_{secrets.token_hex(24)}"


def canonical_path_and_query(raw_path: bytes, query_string: bytes = b"") -> str:
    """PATH_AND_QUERY of the canonical string: the path and the query exactly as sent, percent-
    escapes and all, with "?" only before a non-empty query.

    The server reads them from the request line (ASGI `raw_path` and `query_string`), the
    client from the URL its HTTP library puts on the wire: a decoded path would turn a correct
    signature over `/pi_a%2Db` into a mismatch. Raises UnicodeDecodeError for bytes that are
    not UTF-8, which no UTF-8 canonical string can have signed.
    """
    return (raw_path + (b"?" + query_string if query_string else b"")).decode()


def canonical_request(
    method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    body_hash = hashlib.sha256(body).hexdigest()
    return "\n".join([method.upper(), path_and_query, timestamp, nonce, body_hash])


def sign_request(
    secret_key: str, *, method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    """The `X-Signature` header value for one request."""
    canonical = canonical_request(method, path_and_query, timestamp, nonce, body)
    digest = hmac.new(secret_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signature_matches(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.encode())
