"""Error objects: every failure leaves the API as `{"error": {type, code, message, param}}`.

Handlers raise `ApiError` subclasses; nothing builds error JSON by hand. No stack trace and no
request data (card numbers included) ever reaches an error body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("durapay.api")


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, code: str, message: str, param: str | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.extra = extra or {}
        self.headers = headers
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "code": self.code, "message": self.message,
                          "param": self.param, **self.extra}}


class InvalidRequestError(ApiError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(ApiError):
    status = 401
    type = "authentication_error"


class CardError(ApiError):
    status = 402
    type = "card_error"


class NotFoundError(ApiError):
    status = 404
    type = "not_found"

    def __init__(self, what: str, object_id: str) -> None:
        super().__init__("resource_missing", f"No such {what}: '{object_id}'")


class ConflictError(ApiError):
    status = 409
    type = "conflict"


class ServiceUnavailableError(ApiError):
    status = 503
    type = "api_error"


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        kind = str(first.get("type", ""))
        param = _param_from_loc(tuple(first.get("loc", ())))
        if kind == "json_invalid":
            api_error = InvalidRequestError("invalid_json", "The request body is not valid JSON.")
        elif kind == "missing":
            api_error = InvalidRequestError("parameter_missing",
                                            f"Missing required parameter: {param}.", param)
        elif kind == "extra_forbidden":
            api_error = InvalidRequestError("parameter_unknown",
                                            f"Received unknown parameter: {param}.", param)
        else:
            # pydantic's message names the rule, never echoes the input value.
            api_error = InvalidRequestError("parameter_invalid",
                                            f"Invalid {param}: {first.get('msg', 'invalid')}.",
                                            param)
        return JSONResponse(api_error.body(), status_code=api_error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            body = ApiError("resource_missing", "Unrecognized request URL.").body()
            body["error"]["type"] = "not_found"
        elif error.status_code == 405:
            body = ApiError("method_not_allowed", "Method not allowed for this URL.").body()
        else:
            body = ApiError("http_error", str(error.detail)).body()
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(error).__name__, exc_info=error)
        body = {"error": {"type": "api_error", "code": "internal_error",
                          "message": "An internal error occurred; it has been logged.",
                          "param": None}}
        return JSONResponse(body, status_code=500)
