"""Dependencies as `Annotated` aliases, so handler signatures read as prose."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.admin_throttle import AdminThrottle
from api.authentication import (
    AUTHENTICATION_HEADERS,
    SigningKeys,
    VerifiedMerchant,
    authenticate,
)
from api.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    service_unavailable,
)
from core.crypto import Cipher, VaultCipher
from core.db.intent_operations import IntentSnapshot, read_owned_intent
from core.keyring import Purpose
from core.logs import request_context
from core.settings import Settings
from core.temporal_client import connect_temporal

__all__ = ["AUTHENTICATION_HEADERS"]  # api/openapi.py names the scheme's headers

IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
# Where AuthenticatedRoute leaves what it verified, for the dependencies to pick up.
_VERIFIED_MERCHANT = "durapay.verified_merchant"
_ADMIN_VERIFIED = "durapay.admin_verified"


@dataclass
class AppState:
    """What the app builds once at startup and every request shares."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    # One cipher per purpose, each with its own subkey of the same key ring: a ciphertext of
    # one purpose never decrypts as another's.
    vault: VaultCipher
    merchant_secrets: Cipher
    webhook_secrets: Cipher
    temporal: TemporalConnection
    admin_throttle: AdminThrottle
    signing_keys: SigningKeys

    @classmethod
    def build(
        cls,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        temporal: TemporalConnection,
    ) -> AppState:
        keys = settings.resolved_key_ring()
        merchant_secrets = Cipher(keys, Purpose.MERCHANT_SECRETS)
        return cls(
            settings=settings,
            sessions=sessions,
            vault=VaultCipher(keys, settings.vault_epoch_keys()),
            merchant_secrets=merchant_secrets,
            webhook_secrets=Cipher(keys, Purpose.WEBHOOK_SECRETS),
            temporal=temporal,
            admin_throttle=AdminThrottle(settings.admin_rate_limit_per_minute),
            signing_keys=SigningKeys(merchant_secrets),
        )

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.sessions.kw["bind"]
        return engine

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose every statement is its own transaction: no BEGIN and COMMIT
        round trips around a statement that is atomic by itself."""
        async with self.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")


class TemporalConnection:
    """Connects lazily so the API starts (and /healthz can say why) while Temporal is down; a
    failed connect is tried again by the next request. Once made, the client reconnects by
    itself: it keeps working across a restart of the Temporal server."""

    CONNECT_TIMEOUT_SECONDS = 5.0  # a hung server must not hold requests forever

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Client | None = None
        self._connecting = asyncio.Lock()  # one connect at a time, not one per waiting request

    async def get(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._connecting:
            if self._client is None:
                async with asyncio.timeout(self.CONNECT_TIMEOUT_SECONDS):
                    self._client = await connect_temporal(self._settings)
        return self._client


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hand-off per request.
    return request.app.state.durapay


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_temporal(state: StateDep) -> Client:
    try:
        return await state.temporal.get()
    except Exception as error:  # noqa: BLE001 (any connect failure is "unavailable")
        raise service_unavailable() from error


TemporalDep = Annotated[Client, Depends(get_temporal)]


async def require_admin(
    request: Request, state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """The operator's bearer token, compared in constant time. Failed attempts are throttled
    per client address and in all (api/admin_throttle.py): past the limit every admin request
    of that address answers 429 before its token is even compared, so the answers tell a
    guesser nothing. Checked once per request, before the body is read (AuthenticatedRoute)."""
    if request.scope.get(_ADMIN_VERIFIED):
        return
    client = request.client.host if request.client else "unknown"
    state.admin_throttle.check(client)
    # The header declared above only tells the API docs the scheme (api/openapi.py): the value
    # is read here, where AuthenticatedRoute calls this without it.
    token = (request.headers.get("authorization") or "").removeprefix("Bearer ").strip()
    expected = state.settings.resolved_admin_token()
    # Digests compared, not the tokens: compare_digest's time still tells their lengths apart.
    if (
        len(request.headers.getlist("authorization")) > 1
        or not token
        or not hmac.compare_digest(
            hashlib.sha256(token.encode()).digest(), hashlib.sha256(expected.encode()).digest()
        )
    ):
        state.admin_throttle.failed(client)
        raise AuthenticationError("invalid_admin_token", "Invalid admin token.")
    request.scope[_ADMIN_VERIFIED] = True


AdminDep = Annotated[None, Depends(require_admin)]


async def authenticate_merchant(
    request: Request,
    state: StateDep,
    # Declared for the API docs (api/openapi.py names the scheme from them); the values are
    # read from the request, by AuthenticatedRoute before the body is parsed.
    authorization: Annotated[str | None, Header()] = None,
    x_timestamp: Annotated[str | None, Header()] = None,
    x_nonce: Annotated[str | None, Header()] = None,
    x_signature: Annotated[str | None, Header()] = None,
) -> VerifiedMerchant:
    """Verify the signed request (see API docs and api/authentication.py) and return the
    calling merchant. AuthenticatedRoute does it before the body is parsed; only a route built
    otherwise does it here."""
    merchant: VerifiedMerchant | None = request.scope.get(_VERIFIED_MERCHANT)
    if merchant is None:
        merchant = await authenticate_request(request, state)
    context = request_context.get()
    if context is not None:  # the request's log lines name the merchant from here on
        context.merchant_id = merchant.id
    return merchant


async def authenticate_request(request: Request, state: AppState) -> VerifiedMerchant:
    """The merchant of a request whose signature verifies, its nonce spent and one token of its
    rate limit taken (api/authentication.py); AuthenticationError or RateLimitError if not."""
    async with state.autocommit() as connection:
        return await authenticate(request, connection, state.signing_keys, state.settings)


class AuthenticatedRoute(APIRoute):
    """A route that authenticates its request (merchant signature or admin token, whichever
    its dependencies ask for) before FastAPI reads the body: FastAPI parses JSON before any
    dependency runs, and a client that cannot authenticate must get the same 401 whatever its
    body holds (invalid JSON, gzip, nesting too deep), never a description of how it failed.
    Then it refuses NUL characters anywhere in the request (see `refuse_nul_characters`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        needs = _authentication_of(self.dependant)

        async def authenticate_then_handle(request: Request) -> Response:
            state: AppState = request.app.state.durapay
            if needs is require_admin:
                await require_admin(request, state)
            elif needs is authenticate_merchant:
                request.scope[_VERIFIED_MERCHANT] = await authenticate_request(request, state)
            await refuse_nul_characters(request)
            return await handle(request)

        return authenticate_then_handle


def needs_authentication(route: APIRoute) -> bool:
    return _authentication_of(route.dependant) is not None


async def refuse_nul_characters(request: Request) -> None:
    """400 naming the parameter for a NUL character in a path id, a query parameter or any
    string (key or value) of a JSON body. PostgreSQL text cannot hold NUL, so such a value
    would otherwise fail its query as a 500; no parameter has a use for one."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise _nul_refusal(name)
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise _nul_refusal(name.replace("\x00", "") or None)
    body = await request.body()
    # A JSON string can hold NUL only as the escape `\u0000` (a raw one is invalid JSON), so
    # only a body holding that text is parsed here; FastAPI answers for invalid JSON.
    if b"\\u0000" not in body:
        return
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return
    found = _nul_path(document)
    if found is not None:
        raise _nul_refusal(found or None)


def _nul_path(document: Any) -> str | None:
    """The dotted path (camelCase names, list indexes) of the first string holding NUL ("" for
    the top level), or None. Iterative: the body may nest as deep as the JSON parser allows."""
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str) and "\x00" in value:
            return path
        items = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, list)
            else ()
        )
        for name, item in items:
            if isinstance(name, str) and "\x00" in name:
                return path  # the key itself: name the object holding it
            pending.append((f"{path}.{name}" if path else str(name), item))
    return None


def _nul_refusal(param: str | None) -> InvalidRequestError:
    return InvalidRequestError(
        "parameter_invalid", f"Invalid {param or 'request'}: NUL characters are not allowed.", param
    )


def _authentication_of(dependant: Dependant) -> Callable[..., Any] | None:
    """The authentication dependency a route runs (merchant signature or admin token), found
    anywhere in its dependency tree (e.g. under the idempotency dependency)."""
    for dependency in dependant.dependencies:
        if dependency.call in (authenticate_merchant, require_admin):
            return dependency.call
        found = _authentication_of(dependency)
        if found is not None:
            return found
    return None


MerchantDep = Annotated[VerifiedMerchant, Depends(authenticate_merchant)]


async def get_idempotency_key(
    request: Request,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> str | None:
    if len(request.headers.getlist("idempotency-key")) > 1:
        # Which copy counts would be up to each proxy and framework on the way.
        raise InvalidRequestError(
            "idempotency_key_invalid", "Send Idempotency-Key once.", "Idempotency-Key"
        )
    if idempotency_key is not None and not IDEMPOTENCY_KEY_PATTERN.fullmatch(idempotency_key):
        raise InvalidRequestError(
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
            "Idempotency-Key",
        )
    return idempotency_key


IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]


async def get_owned_payment_intent(
    id: str, merchant: MerchantDep, session: SessionDep
) -> IntentSnapshot:
    intent = await read_owned_intent(await session.connection(), id, merchant.id)
    if intent is None:
        # Another merchant's intent is indistinguishable from a missing one.
        raise NotFoundError("payment_intent", id)
    return intent


OwnedPaymentIntentDep = Annotated[IntentSnapshot, Depends(get_owned_payment_intent)]
