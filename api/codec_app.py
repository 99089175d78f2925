"""The codec listener: lets the Temporal Web UI (and `temporal … --codec-endpoint`) show
Durapay's encrypted payloads in clear.

It decrypts whatever it is sent, so it is its own small app on its own listener
(`DURAPAY_CODEC_HOST`:`DURAPAY_CODEC_PORT`, 127.0.0.1:8089 by default), never part of the
merchant API: reaching the API's port gives nothing here (`/codec/decode` there is a 404). It
lives in `api/` because it is an HTTP surface, but it shares nothing with the merchant app
(no database, no Temporal client, no merchant auth), so neither can expose the other.

Run it with `python -m api.codec_app`; `durapay dev` does, and points its Web UI at it.
- Bound anywhere but loopback, it refuses to start without `DURAPAY_CODEC_TOKEN`.
- With a token set, every decode needs `Authorization: Bearer <token>` (wherever it is bound).
- Without one, it answers only requests that arrived on a loopback address for a loopback
  host name (a web page that rebinds its own name to 127.0.0.1 gets 403), even if someone serves
  this app with their own server on another address.
- Browsers may read its answers only from the Web UI's origins (CORS).
- `DURAPAY_ENV=production` has no codec listener: it refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import sys

import uvicorn
from google.protobuf import json_format
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from core.codec import PayloadEncryptionCodec
from core.logs import configure_logging
from core.settings import Settings, get_settings

CODEC_PATH = "/codec"  # the endpoint the UI is given; it appends /decode
# Temporal caps one payload at 2 MiB by default; the UI sends a few at a time.
MAX_BODY_BYTES = 8 * 1024 * 1024
LOOPBACK_NAMES = frozenset({"localhost"})

log = logging.getLogger("durapay.codec")


class CodecRefused(RuntimeError):
    """These settings must not serve the codec endpoint."""


def display_codec(settings: Settings) -> PayloadEncryptionCodec:
    """The codec that decodes for display (the only place the endpoint builds one). Lenient:
    a payload in clear is shown as it is, where the workers' strict codec refuses it, so an
    operator can see in the Web UI what a forged plaintext Update carried."""
    return PayloadEncryptionCodec.from_key_ring(settings.resolved_key_ring(), strict=False)


def startup_refusal(settings: Settings) -> str | None:
    """Why these settings may not start the codec listener, or None."""
    if settings.env == "production":
        return (
            "DURAPAY_ENV=production has no codec endpoint (it decrypts Temporal payloads); "
            "read histories with a development stack or a codec of your own"
        )
    if not is_loopback(settings.codec_host) and not settings.codec_token:
        return (
            f"DURAPAY_CODEC_HOST={settings.codec_host} is not a loopback address: set "
            "DURAPAY_CODEC_TOKEN, which every request must then present as "
            "`Authorization: Bearer <token>`"
        )
    return None


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere


def public_url(settings: Settings) -> str:
    """The endpoint a Web UI on this machine is given (the browser calls it directly)."""
    host = settings.codec_host
    if host in ("0.0.0.0", "::", ""):  # a wildcard bind answers on loopback too
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.codec_port}{CODEC_PATH}"


def create_codec_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    if settings.env == "production":
        raise CodecRefused(startup_refusal(settings))
    codec = display_codec(settings)
    token = settings.codec_token.encode() if settings.codec_token else None
    origins = settings.codec_allowed_origins

    def with_cors(request: Request, response: Response) -> Response:
        origin = request.headers.get("origin")
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = (
                "content-type,x-namespace,authorization"
            )
        response.headers["Vary"] = "Origin"
        response.headers["Cache-Control"] = "no-store"  # answers are decrypted payloads
        return response

    async def decode_preflight(request: Request) -> Response:
        return with_cors(request, Response(status_code=204))

    async def decode_payloads(request: Request) -> Response:
        refusal = _access_refusal(request, token)
        if refusal is not None:
            return with_cors(request, refusal)
        body = await _bounded_body(request)
        if body is None:
            return with_cors(
                request, _error(413, "request_too_large", f"At most {MAX_BODY_BYTES} bytes.")
            )
        try:
            payloads = json_format.Parse(body, Payloads())
        except json_format.ParseError:
            return with_cors(request, _error(400, "invalid_json", "Expected Payloads as JSON."))
        decoded = Payloads(payloads=await codec.decode(payloads.payloads))
        return with_cors(
            request, Response(json_format.MessageToJson(decoded), media_type="application/json")
        )

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route(f"{CODEC_PATH}/decode", decode_payloads, methods=["POST"]),
            Route(f"{CODEC_PATH}/decode", decode_preflight, methods=["OPTIONS"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def _access_refusal(request: Request, token: bytes | None) -> Response | None:
    if token is not None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token):
            return None
        return _error(
            401,
            "unauthorized",
            "Authorization: Bearer <DURAPAY_CODEC_TOKEN> needed.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    server = request.scope.get("server")
    host_name = (request.headers.get("host") or "").rsplit(":", 1)[0]
    if server is None or not is_loopback(str(server[0])) or not is_loopback(host_name):
        return _error(
            403,
            "forbidden",
            "Without DURAPAY_CODEC_TOKEN the codec endpoint answers only on loopback.",
        )
    return None


async def _bounded_body(request: Request) -> bytes | None:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    kind = "authentication_error" if status in (401, 403) else "invalid_request_error"
    return JSONResponse(
        {"error": {"type": kind, "code": code, "message": message}},
        status_code=status,
        headers=headers,
    )


def main() -> int:
    configure_logging("codec")
    try:
        settings = get_settings()
    except ValidationError as error:
        print("durapay codec: " + "; ".join(e["msg"] for e in error.errors()), file=sys.stderr)
        return 2
    refusal = startup_refusal(settings)
    if refusal is not None:
        print(f"durapay codec: refusing to start: {refusal}", file=sys.stderr)
        return 2
    # Our own server on the checked address: the bind the refusal rule was checked against.
    uvicorn.run(
        create_codec_app(settings),
        host=settings.codec_host,
        port=settings.codec_port,
        access_log=False,
        log_config=None,
    )  # uvicorn's lines: our JSON handler
    return 0


if __name__ == "__main__":
    sys.exit(main())
