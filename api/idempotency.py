"""Idempotency-Key handling, as Stripe does it.

The first request with a key claims it; the stored response is replayed for the same key and
the same parameters; the same key with other parameters is a 400; a key whose first request is
still running is a 409. A claim abandoned by a crashed process can be taken over after a while.
A key is kept `DURAPAY_IDEMPOTENCY_RETENTION_SECONDS` (24 h, as Stripe): past that it is a new
key; the `durapay-housekeeping` schedule deletes expired records (core/db/housekeeping.py), so a
claim never pays for anyone's cleanup.

An endpoint takes part by declaring its key as `Annotated[str | None, idempotent(BodyModel)]`,
on a router built with `route_class=IdempotentRoute`. Its handler then only does its work and
returns its model (or raises an `ApiError`); around it:

1. Before the handler, the dependency claims the key. For a stored answer it raises `Replay`
   instead, which `IdempotentRoute` sends as stored (same status, same bytes): the handler
   never runs.
2. After the handler (the dependency's code after `yield`, scope "function": FastAPI has built
   the response but not sent it), the answer is stored: the exact bytes sent, or the error
   object an `ApiError` renders to. 409 and 503 are not stored but release the claim, so that
   a retry redoes the request; so does any unexpected exception. What the handler leaves
   uncommitted in the session commits with the stored answer, in one database transaction: a
   crash in between can leave neither half alone. Without a key, it simply commits. If the
   database goes away while the answer is stored (the connection dies at the UPDATE or the
   COMMIT), the request answers 503 and the claim is released as well, when Postgres still
   answers the release.

Why a route class as well: a dependency with `yield` runs before and after the handler, in the
request's session, but FastAPI never shows it the response that the handler's model became.
`IdempotentRoute` is the small wrapper that does: it hands that response over (and sends
replays). Why the dependency declares the endpoint's body too: dependencies run before FastAPI
validates the handler's own parameters, so the dependency's own copy of the body is what makes
FastAPI validate it first (an invalid request claims nothing) and gives the fingerprint the
parameters as validated, defaults included (`RequestModel.idempotency_parameters`:
a card counts only as the answer shows it, see `TransactionCreate`).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from api.deps import AuthenticatedRoute, IdempotencyKeyDep, MerchantDep, SessionDep, StateDep
from api.errors import ApiError, ConflictError, InvalidRequestError, is_outage
from api.schemas.base import RequestModel
from core.db.housekeeping import ABANDONED_AFTER
from core.db.idempotency_records import (
    claim_record,
    read_record,
    release_claim,
    store_response,
    take_over_record,
)
from core.keyring import KeyRing, MasterKey

__all__ = ["ABANDONED_AFTER"]
# `response_body` is JSONB, which reorders an object's keys: the answer is kept as the JSON text
# that was sent, under this one key, so that a replay is the same bytes.
SENT_TEXT = "sent"


@dataclass
class StoredResponse:
    status: int
    content: bytes

    @classmethod
    def from_record(cls, status: int, body: dict[str, Any]) -> StoredResponse:
        if set(body) == {SENT_TEXT} and isinstance(body[SENT_TEXT], str):
            return cls(status, body[SENT_TEXT].encode())
        # Stored before answers were kept as sent: rendered as they were replayed then.
        rendered = JSONResponse(body).body
        assert isinstance(rendered, bytes)  # JSONResponse renders bytes
        return cls(status, rendered)

    def response(self) -> Response:
        return Response(self.content, status_code=self.status, media_type="application/json")


class Replay(Exception):
    """Raised by the dependency for a stored answer; `IdempotentRoute` sends it."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("replay the stored answer")
        self.stored = stored


def request_fingerprint(key: MasterKey, endpoint: str, payload: Any) -> str:
    """Keyed hash of the parameters (card data already left out by `idempotency_parameters`):
    keyed, so that a guessable body (an amount, an order number) cannot be confirmed from the
    database alone."""
    canonical = json.dumps([endpoint, payload], sort_keys=True, separators=(",", ":"))
    return hmac.new(key.fingerprint_key, canonical.encode(), hashlib.sha256).hexdigest()


def request_fingerprints(ring: KeyRing, endpoint: str, payload: Any) -> list[str]:
    """The fingerprint under every master key of the ring, the current one (which new
    records store) first: a retry whose first request was fingerprinted before a key rotation
    still matches it, for as long as the old key is retired rather than dropped."""
    return [request_fingerprint(key, endpoint, payload) for key in ring.keys]


async def claim(
    session: AsyncSession,
    *,
    merchant_id: str,
    key: str,
    endpoint: str,
    fingerprints: Sequence[str],
    retention: timedelta,
    commit: bool = True,
) -> StoredResponse | None:
    """Claim the key for this request, or return the response stored for it.

    `fingerprints`: the request's, the first under the current key (stored by a new claim),
    the others under retired keys (matched by a record stored before a rotation).

    A record past `retention` is claimed as if it did not exist: its answer and parameters are
    forgotten (core/db/idempotency_records.py). With `commit=False` the claim is left for the
    handler's first commit: until then a request with the same key waits on its row lock (see
    `idempotent`)."""
    if await claim_record(
        await session.connection(),
        merchant_id=merchant_id,
        key=key,
        endpoint=endpoint,
        request_hash=fingerprints[0],
        now=datetime.now(UTC),
        retention=retention,
    ):
        if commit:
            await session.commit()
        return None
    record = await read_record(await session.connection(), merchant_id=merchant_id, key=key)
    await session.commit()
    if record.endpoint != endpoint or record.request_hash not in fingerprints:
        raise InvalidRequestError(
            "idempotency_key_reused",
            "Keys for idempotent requests can only be used with the same parameters they were "
            "first used with.",
            "Idempotency-Key",
        )
    if record.response_status is not None and record.response_body is not None:
        return StoredResponse.from_record(record.response_status, record.response_body)
    if datetime.now(UTC) - record.created_at < ABANDONED_AFTER:
        raise ConflictError(
            "idempotency_key_in_use",
            "A request with this Idempotency-Key is still being processed.",
        )
    if not await take_over_record(
        await session.connection(),
        merchant_id=merchant_id,
        key=key,
        claimed_at=record.created_at,
        now=datetime.now(UTC),
    ):
        await session.rollback()
        raise ConflictError(
            "idempotency_key_in_use",
            "A request with this Idempotency-Key is still being processed.",
        )
    if commit:
        await session.commit()
    return None


async def store(
    session: AsyncSession, *, merchant_id: str, key: str, status: int, content: bytes
) -> None:
    """Store the answer, committing with it whatever the handler left uncommitted."""
    await store_response(
        await _connection_for_one_statement(session),
        merchant_id=merchant_id,
        key=key,
        status=status,
        body={SENT_TEXT: content.decode()},
    )
    await session.commit()


async def release(session: AsyncSession, *, merchant_id: str, key: str) -> None:
    """Forget a claim whose request failed before doing anything, so a retry can run."""
    await session.rollback()
    await release_claim(
        await _connection_for_one_statement(session), merchant_id=merchant_id, key=key
    )
    await session.commit()


async def _release_if_reachable(session: AsyncSession, *, merchant_id: str, key: str) -> None:
    """Release a claim whose answer could not be stored because the database went away. Had
    the COMMIT reached Postgres before the connection died, the answer is stored and `release`
    deletes nothing (the retry replays it). While Postgres is still down the claim stays, and a
    retry may take it over after `ABANDONED_AFTER`, as after a crash."""
    try:
        await release(session, merchant_id=merchant_id, key=key)
    except Exception as error:
        if not is_outage(error):
            raise


async def _connection_for_one_statement(session: AsyncSession) -> AsyncConnection:
    """The session's connection; in autocommit when nothing of the handler's is left to
    commit (a charge committed before its Update, or a release after the rollback): the one
    statement is atomic by itself, so it runs without a BEGIN and a COMMIT."""
    if session.in_transaction() or session.new or session.dirty or session.deleted:
        return await session.connection()
    return await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


class IdempotentRoute(AuthenticatedRoute):
    """The route class of routers with idempotent endpoints: hands each response to the
    request's claim before it is sent, and sends a replayed answer as stored."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_once(request: Request) -> Response:
            try:
                response = await handle(request)
            except Replay as replay:
                return replay.stored.response()
            request.state.idempotent_answer = response
            return response

        return handle_once


def idempotent(
    model: type[RequestModel], *, optional: bool = False, commit_claim: bool = True
) -> Any:
    """`Depends(...)` giving an idempotent endpoint its Idempotency-Key (None without one),
    claimed before the handler runs and answered after it (see the module's docstring).

    `model` is the endpoint's body model, `optional` when the body may be absent (the model's
    defaults then). Declare the key after the parameters whose dependencies may refuse the
    request (an owned-intent lookup, a card check): their refusals are not stored.

    `commit_claim=False`: the handler's own first commit (which must come before anything
    slow) carries the claim, sparing a transaction; until then, a request with the same key
    waits on the claim's row lock, and after it gets 409 `idempotency_key_in_use`.
    """

    async def claim_key(
        request: Request,
        merchant: MerchantDep,
        state: StateDep,
        session: SessionDep,
        key: IdempotencyKeyDep,
        body: RequestModel | None = None,
    ) -> AsyncIterator[str | None]:
        if not isinstance(request.scope.get("route"), IdempotentRoute):
            raise RuntimeError(
                f"{request.url.path}: an idempotent endpoint's router needs "
                "route_class=IdempotentRoute"
            )
        if not key:
            yield key
            await session.commit()
            return
        endpoint = f"{request.method} {request.url.path}"
        payload = (body or model()).idempotency_parameters()
        stored = await claim(
            session,
            merchant_id=merchant.id,
            key=key,
            endpoint=endpoint,
            fingerprints=request_fingerprints(
                state.settings.resolved_key_ring(), endpoint, payload
            ),
            retention=timedelta(seconds=state.settings.idempotency_retention_seconds),
            commit=commit_claim,
        )
        if stored is not None:
            raise Replay(stored)
        try:
            yield key
        except ApiError as error:
            if error.status in (409, 503):
                await release(session, merchant_id=merchant.id, key=key)
            else:  # rendered as the error handler renders it (api/errors.py)
                rendered = JSONResponse(error.body()).body
                assert isinstance(rendered, bytes)  # JSONResponse renders bytes
                await store(
                    session, merchant_id=merchant.id, key=key, status=error.status, content=rendered
                )
            raise
        except Exception:
            await release(session, merchant_id=merchant.id, key=key)
            raise
        answer: Response = request.state.idempotent_answer
        try:
            await store(
                session,
                merchant_id=merchant.id,
                key=key,
                status=answer.status_code,
                content=bytes(answer.body),
            )
        except Exception as error:
            if is_outage(error):  # answered 503: the retry it asks for must find the key free
                await _release_if_reachable(session, merchant_id=merchant.id, key=key)
            raise

    # FastAPI reads the body's type from the signature. Same name and type as the handler's own
    # `body`, so the request still has one JSON body (not one embedded per parameter).
    signature = inspect.signature(claim_key)
    parameters = list(signature.parameters.values())
    parameters[-1] = parameters[-1].replace(
        annotation=model | None if optional else model,
        default=None if optional else inspect.Parameter.empty,
    )
    # FastAPI reads the parameters from __signature__, which typeshed does not declare on functions.
    claim_key.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return Depends(claim_key, scope="function")
