"""The codec endpoint: lets the Temporal Web UI (and `temporal workflow show --codec-endpoint`)
show Durapay's encrypted payloads in clear.

It decrypts anything encrypted under our master key, so it is off unless
DURAPAY_CODEC_ENDPOINT_ENABLED is set. `durapay dev` sets it for its loopback-only stack;
in production, enable it only behind an operator-authenticating proxy.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from api.deps import StateDep
from api.errors import InvalidRequestError
from core.codec import PayloadEncryptionCodec

router = APIRouter(prefix="/codec", tags=["operators"], include_in_schema=False)


def _cors(request: Request, state: StateDep, response: Response) -> Response:
    """Browsers may call us only from the Web UI's own origin."""
    origin = request.headers.get("origin")
    if origin in state.settings.codec_allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "content-type,x-namespace"
        response.headers["Vary"] = "Origin"
    return response


@router.options("/decode")
async def decode_preflight(request: Request, state: StateDep) -> Response:
    return _cors(request, state, Response(status_code=204))


@router.post("/decode")
async def decode_payloads(request: Request, state: StateDep) -> Response:
    if not state.settings.codec_endpoint_enabled:
        return Response(status_code=404)
    try:
        payloads = json_format.Parse(await request.body(), Payloads())
    except json_format.ParseError as error:
        raise InvalidRequestError("invalid_json", "Expected Payloads as JSON.", None) from error
    codec = PayloadEncryptionCodec(state.settings.resolved_master_key())
    decoded = Payloads(payloads=await codec.decode(payloads.payloads))
    return _cors(request, state, Response(json_format.MessageToJson(decoded),
                                          media_type="application/json"))
