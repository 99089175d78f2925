"""Encryption at rest (AES-256-GCM) and the HMAC request-signing scheme.

The signing functions are shared by the API (verifying) and the merchant client (signing), so
the canonical string is defined exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SIGNATURE_VERSION = "v1"
_NONCE_BYTES = 12


class Cipher:
    """AES-GCM with a random nonce per message; `context` binds a ciphertext to its row.

    Binding (e.g. the key's public id) means a ciphertext copied onto another row does not
    decrypt, so a database-level swap cannot impersonate another merchant or card.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, *, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def decrypt(self, blob: bytes, *, context: str) -> bytes:
        return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], context.encode())


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
