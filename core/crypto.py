"""Encryption at rest (AES-256-GCM under the key ring) and the HMAC request-signing scheme.

The signing functions are shared by the API (verifying) and the merchant client (signing), so
the canonical string is defined exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag

from core.keyring import KEY_ID_BYTES, KeyRing, MasterKey, Purpose

SIGNATURE_VERSION = "v1"
# Ciphertexts at rest: version byte, master key id, nonce, then AES-GCM's output.
FORMAT_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + KEY_ID_BYTES
_PREFIX_BYTES = _HEADER_BYTES + _NONCE_BYTES


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
        return header + nonce + key.aead(self.purpose).encrypt(nonce, plaintext,
                                                               header + context.encode())

    def decrypt(self, blob: bytes, *, context: str) -> bytes:
        """The plaintext; raises InvalidTag for a ciphertext of another row or purpose, or a
        damaged one, and UnknownMasterKey for one under a key this ring does not hold."""
        key = self._keys.find(key_id_bytes(blob)) if _has_header(blob) else None
        if key is not None:
            header, nonce = blob[:_HEADER_BYTES], blob[_HEADER_BYTES:_PREFIX_BYTES]
            try:
                return key.aead(self.purpose).decrypt(nonce, blob[_PREFIX_BYTES:],
                                                      header + context.encode())
            except InvalidTag:
                pass  # one legacy ciphertext in 2^72 starts like a header: tried below
        for legacy in self._keys.keys:
            try:
                return legacy.legacy_aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:],
                                                  context.encode())
            except (InvalidTag, ValueError):
                continue
        if key is None and _has_header(blob):
            raise UnknownMasterKey(
                f"ciphertext under master key {key_id_bytes(blob).hex()}, which is neither the "
                f"current key ({self._keys.current.key_id}) nor a retired one: add it to "
                "DURAPAY_RETIRED_MASTER_KEYS")
        raise InvalidTag()

    def is_current(self, blob: bytes) -> bool:
        """Whether `blob` is already in this format under the current master key."""
        return blob[:_HEADER_BYTES] == _header(self._keys.current)

    def reencrypted(self, blob: bytes, *, context: str) -> bytes | None:
        """`blob` under the current master key, or None if it already is."""
        if self.is_current(blob):
            return None
        return self.encrypt(self.decrypt(blob, context=context), context=context)


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


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def canonical_path_and_query(raw_path: bytes, query_string: bytes = b"") -> str:
    """PATH_AND_QUERY of the canonical string: the path and the query exactly as sent, percent-
    escapes and all, with "?" only before a non-empty query.

    The server reads them from the request line (ASGI `raw_path` and `query_string`), the
    client from the URL its HTTP library puts on the wire: a decoded path would turn a correct
    signature over `/pi_a%2Db` into a mismatch. Raises UnicodeDecodeError for bytes that are
    not UTF-8, which no UTF-8 canonical string can have signed.
    """
    return (raw_path + (b"?" + query_string if query_string else b"")).decode()


def canonical_request(method: str, path_and_query: str, timestamp: str, nonce: str,
                      body: bytes) -> str:
    body_hash = hashlib.sha256(body).hexdigest()
    return "\n".join([method.upper(), path_and_query, timestamp, nonce, body_hash])


def sign_request(secret_key: str, *, method: str, path_and_query: str, timestamp: str,
                 nonce: str, body: bytes) -> str:
    """The `X-Signature` header value for one request."""
    canonical = canonical_request(method, path_and_query, timestamp, nonce, body)
    digest = hmac.new(secret_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signature_matches(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.encode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
