"""Signed requests verified in one database round trip (docs/api.md, "Signed requests").

A request is checked in this order, and every failure is a 401 that changes nothing:
1. its headers (shape only, no I/O);
2. its signature, with the key's secret from `SigningKeys`, this process's cache of decrypted
   secrets (a key this process has not seen yet costs one read of its row first);
3. one autocommit statement (`AUTHENTICATE`) that re-checks the key's row (still there, not
   expired, its merchant still there), spends the nonce and, only if the nonce was new, takes a
   token of the key's rate limit (api/rate_limit.py), and returns the merchant.

The nonce is spent before the rate limit is asked, in the same statement: a request refused
with 429 has still used its nonce, so the same signed bytes sent again later are a replay
(401), not a request that now succeeds. A sharded key whose first shard is empty tries its
fallback shard in a second statement (api/rate_limit.py).

Why the cache holds only the secret: of a key's row, only `expires_at` ever changes (a key roll
sets it, possibly to now; a master key rotation re-encrypts the same secret), and step 3 reads
it on every request, in the database every API process shares. So a roll, an expiry or a
deleted key or merchant refuses the very next request in every process; the cached secret and
merchant id of a public key never change while its row exists (a roll issues a new public
key). docs/security.md states the bound.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from api.errors import AuthenticationError
from api.rate_limit import (
    SPEND_FROM_BUCKET,
    TokenRequest,
    rate_limited,
    seconds_until_token,
    take_from_shards,
    token_request,
)
from core.crypto import Cipher, canonical_path_and_query, sign_request, signature_matches
from core.settings import Settings

NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Unix seconds in ASCII digits only: str.isdigit() and int() also take '²' or '٣', and int()
# raises past 4,300 digits; twelve digits reach the year 33658.
TIMESTAMP_PATTERN = re.compile(r"[0-9]{1,12}")
# Sent more than once, these would leave it to each proxy and framework which copy counts.
AUTHENTICATION_HEADERS = ("Authorization", "X-Timestamp", "X-Nonce", "X-Signature")

READ_SIGNING_KEY = text(
    "SELECT merchant_id, secret_ciphertext, expires_at FROM merchant_key "
    "WHERE public_key = :public_key"
)

# The key still valid (and its merchant there), then the nonce spent only for a valid key, then
# a token taken only for a new nonce: each step reads the one before it, so a refused request
# writes nothing it should not. One statement, so one snapshot and one round trip.
_VALID_KEY = """signing_key AS (
    SELECT merchant.id, merchant.name
    FROM merchant_key JOIN merchant ON merchant.id = merchant_key.merchant_id
    WHERE merchant_key.public_key = :public_key
      AND merchant_key.merchant_id = :merchant_id
      AND (merchant_key.expires_at IS NULL OR merchant_key.expires_at > now())
), spent_nonce AS (
    INSERT INTO request_nonce (public_key, nonce, expires_at)
    SELECT :public_key, :nonce, CAST(:nonce_expires_at AS timestamptz) FROM signing_key
    ON CONFLICT DO NOTHING
    RETURNING nonce
)"""
AUTHENTICATE = text(f"""
WITH {_VALID_KEY}, taken_token AS (
    INSERT INTO rate_limit_bucket AS bucket (public_key, shard, tokens, allowed, updated_at)
    SELECT :public_key, CAST(:shard AS smallint), CAST(:burst AS float8) - 1, true,
           clock_timestamp()
    FROM spent_nonce
    {SPEND_FROM_BUCKET}
)
SELECT signing_key.id, signing_key.name,
       EXISTS (SELECT FROM spent_nonce) AS nonce_spent, taken_token.allowed, taken_token.tokens
FROM signing_key LEFT JOIN taken_token ON true
""")
# The rate limit turned off (DURAPAY_RATE_LIMIT_PER_SECOND=0): the same without the token.
AUTHENTICATE_UNLIMITED = text(f"""
WITH {_VALID_KEY}
SELECT signing_key.id, signing_key.name,
       EXISTS (SELECT FROM spent_nonce) AS nonce_spent, true AS allowed,
       CAST(NULL AS float8) AS tokens
FROM signing_key
""")


@dataclass(frozen=True)
class VerifiedMerchant:
    """The merchant a verified request acts for, as handlers use it (read by `AUTHENTICATE`:
    a plain value, not a table model, which costs more to build than the statement to read)."""

    id: str
    name: str


def invalid_api_key() -> AuthenticationError:
    return AuthenticationError("invalid_api_key", "Unknown or revoked API key.")


@dataclass(frozen=True)
class SigningKey:
    """What this process keeps of a key: none of it changes while the key's row exists, except
    `expires_at`, which `AUTHENTICATE` reads again on every request."""

    public_key: str
    merchant_id: str
    secret: str
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class SigningKeys:
    """Decrypted signing secrets by public key, for this process. Only keys that existed when
    read are kept (an unknown key is read again each time), at most
    `MAX_KEYS` of them: past that the oldest entry goes first."""

    MAX_KEYS = 10_000

    def __init__(self, cipher: Cipher) -> None:
        self._cipher = cipher
        self._keys: dict[str, SigningKey] = {}

    async def get(self, connection: AsyncConnection, public_key: str) -> SigningKey:
        """The key, read from the database unless cached; AuthenticationError if it is unknown
        or expired."""
        key = self._keys.get(public_key)
        if key is None:
            row = (await connection.execute(READ_SIGNING_KEY, {"public_key": public_key})).first()
            if row is None:
                raise invalid_api_key()
            key = SigningKey(
                public_key=public_key,
                merchant_id=row.merchant_id,
                secret=self._cipher.decrypt(row.secret_ciphertext, context=public_key).decode(),
                expires_at=row.expires_at,
            )
            self._remember(key)
        if key.expired(datetime.now(UTC)):
            self.forget(public_key)
            raise invalid_api_key()
        return key

    def forget(self, public_key: str) -> None:
        self._keys.pop(public_key, None)

    def _remember(self, key: SigningKey) -> None:
        if len(self._keys) >= self.MAX_KEYS:
            self._keys.pop(next(iter(self._keys)))
        self._keys[key.public_key] = key


async def authenticate(
    request: Request, connection: AsyncConnection, keys: SigningKeys, settings: Settings
) -> VerifiedMerchant:
    """The merchant of a request whose signature verifies, its nonce spent and one token of its
    rate limit taken; AuthenticationError or RateLimitError if not. `connection` autocommits."""
    headers = request.headers
    nonce = headers.get("x-nonce") or ""
    key = await verify_signature(request, connection, keys, settings)
    wanted = token_request(settings)
    parameters: dict[str, object] = {
        "public_key": key.public_key,
        "merchant_id": key.merchant_id,
        "nonce": nonce,
        "nonce_expires_at": datetime.now(UTC) + nonce_lifetime(settings),
    }
    if wanted is None:
        row = (await connection.execute(AUTHENTICATE_UNLIMITED, parameters)).first()
    else:
        row = (
            await connection.execute(
                AUTHENTICATE, {**parameters, **wanted.parameters(wanted.shards[0])}
            )
        ).first()
    if row is None:  # rolled, expired or deleted since this process cached it
        keys.forget(key.public_key)
        raise invalid_api_key()
    if not row.nonce_spent:
        raise AuthenticationError("replayed_nonce", "This nonce was already used.")
    if not row.allowed:
        await _take_from_fallbacks(connection, wanted, key.public_key, row.tokens)
    return VerifiedMerchant(id=row.id, name=row.name)


async def _take_from_fallbacks(
    connection: AsyncConnection, wanted: TokenRequest | None, public_key: str, tokens: float
) -> None:
    assert wanted is not None  # a refusal comes only from a bucket
    waits = [seconds_until_token(wanted, tokens)]
    if len(wanted.shards) == 1:
        raise rate_limited(wanted, waits)
    await take_from_shards(connection, wanted, public_key, wanted.shards[1:], waits=waits)


def nonce_lifetime(settings: Settings) -> timedelta:
    """How long a spent nonce is kept: a request signed at either end of the timestamp window
    is a replay for as long as its timestamp is accepted."""
    return timedelta(seconds=2 * settings.signature_tolerance_seconds)


async def verify_signature(
    request: Request, connection: AsyncConnection, keys: SigningKeys, settings: Settings
) -> SigningKey:
    """The request's key, if its signature verifies; AuthenticationError if not. Changes
    nothing: the nonce and the rate limit are the caller's."""
    headers = request.headers
    for name in AUTHENTICATION_HEADERS:
        if len(headers.getlist(name)) > 1:
            raise AuthenticationError("duplicate_header", f"Send {name} once.", name)
    public_key = (headers.get("authorization") or "").removeprefix("Bearer ").strip()
    x_timestamp, x_nonce = headers.get("x-timestamp"), headers.get("x-nonce")
    x_signature = headers.get("x-signature")
    if not public_key.startswith("pk_"):
        raise AuthenticationError(
            "missing_api_key", "Send your public key as 'Authorization: Bearer pk_…'."
        )
    if not (x_timestamp and x_nonce and x_signature):
        raise AuthenticationError(
            "missing_signature", "Signed requests need X-Timestamp, X-Nonce and X-Signature."
        )
    if (
        not TIMESTAMP_PATTERN.fullmatch(x_timestamp)
        or abs(time.time() - int(x_timestamp)) > settings.signature_tolerance_seconds
    ):
        raise AuthenticationError(
            "timestamp_out_of_window",
            f"X-Timestamp is more than "
            f"{settings.signature_tolerance_seconds} seconds from the server's clock.",
        )
    if not NONCE_PATTERN.fullmatch(x_nonce):
        raise AuthenticationError("invalid_nonce", "X-Nonce must be 16 to 64 of [A-Za-z0-9_-].")
    key = await keys.get(connection, public_key)
    expected = sign_request(
        key.secret,
        method=request.method,
        path_and_query=_path_and_query_as_sent(request),
        timestamp=x_timestamp,
        nonce=x_nonce,
        body=await request.body(),
    )
    if not signature_matches(expected, x_signature):
        raise AuthenticationError("invalid_signature", "The request signature does not match.")
    return key


def _path_and_query_as_sent(request: Request) -> str:
    """The request target as the client sent it, not as decoded: `request.url.path` has `%2D`
    already turned into `-`, so a signature over what was sent would not match it."""
    raw_path: bytes | None = request.scope.get("raw_path")
    if raw_path is None:  # optional in ASGI; every server we run sets it
        raw_path = request.scope["path"].encode()
    try:
        return canonical_path_and_query(raw_path, request.scope.get("query_string", b""))
    except UnicodeDecodeError:  # no canonical string (UTF-8) was signed over these bytes
        raise AuthenticationError(
            "invalid_signature", "The request signature does not match."
        ) from None
