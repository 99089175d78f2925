"""The HTTP surface of the simulated card network."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cardnet.faults import FaultSettings, WireFault
from cardnet.models import (
    LedgerEntryOut,
    LedgerOut,
    OperationIn,
    OperationOut,
    OperationStatusOut,
    OperationType,
)
from cardnet.network import Answer, CardNetwork, Outcome
from cardnet.records import Committed, Hold
from cardnet.responses import (
    DroppedResponse,
    TrickledResponse,
    garbage_response,
    gateway_error_response,
    quiet_uvicorn_about_drops,
)
from cardnet.settings import Settings

logger = logging.getLogger(__name__)


def _error(status_code: int, error: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse(
        status_code=status_code,
        content=jsonable_encoder({"error": error, "message": message, **extra}),
    )


def _operation_out(state: Committed | Hold) -> OperationOut:
    status: Literal["approved", "declined", "pending"]
    if isinstance(state, Committed):
        op, status, code = state.op, state.decision.status, state.decision.decline_code
    else:
        op, status, code = state.op, "pending", None
    return OperationOut(
        reference=op.reference,
        type=op.type,
        status=status,
        decline_code=code,
        amount_in_cents=op.amount_in_cents,
        currency=op.currency,
        brand=op.brand,
        parent_reference=op.parent_reference,
        created_at=op.created_at,
    )


def _ledger_entry_out(entry: Committed) -> LedgerEntryOut:
    op = entry.op
    return LedgerEntryOut(
        reference=op.reference,
        # For the money a reversal is a void of its original (or of nothing, a tombstone).
        type=OperationType.VOID if op.type == OperationType.REVERSAL else op.type,
        status=entry.decision.status,
        decline_code=entry.decision.decline_code,
        amount_in_cents=op.amount_in_cents,
        currency=op.currency,
        brand=op.brand,
        parent_reference=op.parent_reference,
        created_at=op.created_at,
        committed_at=entry.committed_at,
    )


def _answer_response(answer: Answer, trickle_pause_seconds: float) -> Response:
    if answer.outcome == Outcome.UNAVAILABLE:
        return _error(
            503,
            "network_unavailable",
            "the card network is unavailable; nothing was charged, retry with the same reference",
        )
    if answer.outcome == Outcome.CONFLICT:
        return _error(
            409,
            "reference_reused",
            "this reference was already used for a "
            "different operation (type, amount, currency, card or parent)",
        )
    state = answer.entry if answer.outcome == Outcome.DECIDED else answer.hold
    assert state is not None  # every DECIDED/PENDING answer carries its state
    body = _operation_out(state).model_dump(mode="json", by_alias=True)
    # 202: the network accepted the operation but has not decided it yet; poll the status.
    status_code = 200 if answer.outcome == Outcome.DECIDED else 202
    if answer.outcome != Outcome.DECIDED or answer.wire_fault is None:
        return JSONResponse(body, status_code=status_code)
    logger.warning("answer for %s: simulated %s", state.op.reference, answer.wire_fault.value)
    if answer.wire_fault == WireFault.DROP:
        return DroppedResponse(body, status_code)
    if answer.wire_fault == WireFault.GATEWAY_ERROR:
        return gateway_error_response()
    if answer.wire_fault == WireFault.GARBAGE:
        return garbage_response(body, status_code)
    return TrickledResponse(body, status_code, trickle_pause_seconds)


async def _client_gone(request: Request) -> None:
    """Return once the client disconnects (the body has already been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _submit_while_connected(
    network: CardNetwork, body: OperationIn, request: Request
) -> Response:
    """Run the submission, but stop waiting for it when the caller hangs up.

    A caller that timed out during a hold must not pin a request task for the rest of the
    hold (it would also stall a graceful shutdown). Abandoning the wait is safe: held
    commits run in HoldManager tasks, not in this one.
    """
    submit = asyncio.ensure_future(network.submit(body))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({submit, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not submit.done():
            submit.cancel()
    if not submit.done():
        logger.info("caller of %s hung up before the answer", body.reference)
        # Nobody reads this; 499 (client closed request) keeps access logs honest.
        return Response(status_code=499)
    return _answer_response(submit.result(), network.settings.trickle_pause_seconds)


def create_app(data_dir: Path, settings: Settings | None = None) -> FastAPI:
    """Build the app; the ledger in data_dir is opened at startup and closed at shutdown."""
    network = CardNetwork(data_dir, settings or Settings())
    quiet_uvicorn_about_drops()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        network.start()
        s = network.settings
        logger.info(
            "cardnet started (data dir %s, hold %.1fs, status lag %.1fs, trickle pause %.1fs)",
            data_dir,
            s.hold_seconds,
            s.status_lag_seconds,
            s.trickle_pause_seconds,
        )
        try:
            yield
        finally:
            await network.stop()

    app = FastAPI(title="Durapay cardnet", version="1.0", lifespan=lifespan)
    app.state.network = network

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", "the request body is malformed", detail=exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
        return _error(exc.status_code, error, str(exc.detail))

    @app.post("/v1/operations", response_model=None)
    async def submit_operation(body: OperationIn, request: Request) -> Response:
        return await _submit_while_connected(network, body, request)

    @app.get("/v1/operations/{reference:path}")
    async def operation_status(reference: str) -> OperationStatusOut:
        state = network.status(reference)
        if state is None:
            return OperationStatusOut(reference=reference, status="not_found")
        return OperationStatusOut(**_operation_out(state).model_dump())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ledger")
    async def ledger(reference: str | None = None) -> LedgerOut:
        entries = network.ledger.entries(reference)
        return LedgerOut(data=[_ledger_entry_out(e) for e in entries])

    @app.get("/faults")
    async def get_faults() -> dict[str, object]:
        return network.faults.settings.to_json()

    @app.post("/faults", response_model=None)
    async def set_faults(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            faults = FaultSettings.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            detail = exc.errors(include_url=False, include_context=False, include_input=False)
            return _error(400, "invalid_faults", "fault settings are invalid", detail=detail)
        logger.info("faults set to %s", faults.to_json())
        return JSONResponse(network.faults.replace(faults).to_json())

    @app.delete("/faults")
    async def reset_faults() -> dict[str, object]:
        logger.info("faults reset")
        return network.faults.reset().to_json()

    return app
