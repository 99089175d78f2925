"""Error objects: every failure leaves the API as `{"error": {type, code, message, param}}`.

Handlers raise `ApiError` subclasses; nothing builds error JSON by hand. No stack trace and no
request data (card numbers included) ever reaches an error body. While Postgres or Temporal is
unreachable (restarting, say), whatever a request hits answers 503 `service_unavailable` with a
`Retry-After`, never a 500.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger("durapay.api")

# A restarted Postgres answers within a second or two, a restarted Temporal dev server in a few.
RETRY_AFTER_SECONDS = 2
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
    }
)
_DATABASE_DOWN: tuple[type[BaseException], ...] = (
    # Refused, reset, timed out: asyncpg lets these through unwrapped (see also _NETWORK_ERRNOS).
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, a connection lost mid-query included
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
_TEMPORAL_DOWN = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.extra = extra or {}
        self.headers = headers
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
                **self.extra,
            }
        }


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


class RequestTooLargeError(ApiError):
    status = 413
    type = "invalid_request_error"


class RequestTimeoutError(ApiError):
    status = 408
    type = "invalid_request_error"


class RateLimitError(ApiError):
    status = 429
    type = "rate_limit_error"


class ServiceUnavailableError(ApiError):
    status = 503
    type = "api_error"


def service_unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "service_unavailable",
        "Durapay cannot reach a service it depends on right now; "
        "nothing was lost. Retry the request (with the same Idempotency-Key) shortly.",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def is_outage(error: BaseException) -> bool:
    """True when `error`, or an error it was raised from, says Postgres or Temporal cannot be
    reached: the request may succeed once it is back, so it is a 503, not a bug. A SQLAlchemy
    error raised while handling an outage counts too (a session whose connection died refuses
    further work with `PendingRollbackError`, whose only link to the outage is its context)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RPCError):
            return current.status in _TEMPORAL_DOWN
        if isinstance(current, _DATABASE_DOWN) or (
            isinstance(current, OSError) and current.errno in _NETWORK_ERRNOS
        ):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.DBAPIError):
            current = current.__cause__ or current.orig
        elif isinstance(current, sa_exc.SQLAlchemyError):
            current = current.__cause__ or current.__context__
        else:
            current = current.__cause__
    return False


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        # Authentication has passed by now (api/deps.py, AuthenticatedRoute): telling how the
        # body failed helps only a client that may send it.
        first = error.errors()[0] if error.errors() else {}
        kind = str(first.get("type", ""))
        param = _param_from_loc(tuple(first.get("loc", ())))
        if kind == "json_invalid":
            api_error = InvalidRequestError("invalid_json", "The request body is not valid JSON.")
        elif kind == "missing":
            api_error = InvalidRequestError(
                "parameter_missing", f"Missing required parameter: {param}.", param
            )
        elif kind == "extra_forbidden":
            api_error = InvalidRequestError(
                "parameter_unknown", f"Received unknown parameter: {param}.", param
            )
        else:
            # pydantic's message names the rule, never echoes the input value.
            api_error = InvalidRequestError(
                "parameter_invalid", f"Invalid {param}: {first.get('msg', 'invalid')}.", param
            )
        return JSONResponse(api_error.body(), status_code=api_error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            body = ApiError("resource_missing", "Unrecognized request URL.").body()
            body["error"]["type"] = "not_found"
        elif error.status_code == 405:
            body = ApiError("method_not_allowed", "Method not allowed for this URL.").body()
        elif error.status_code == 400:  # FastAPI could not read the body (not UTF-8, too deep)
            body = InvalidRequestError("invalid_json", "The request body is not valid JSON.").body()
        else:
            body = ApiError("http_error", str(error.detail)).body()
        return JSONResponse(body, status_code=error.status_code)

    async def _dependency(request: Request, error: Exception) -> JSONResponse:
        """Registered for the exception types a dependency's failure arrives as, so that they
        are answered here (the connection stays usable) instead of by the catch-all below."""
        if not is_outage(error):
            return await _unexpected(request, error)
        # The type is enough: a driver's message may quote the statement and its parameters.
        log.warning("dependency unavailable (%s): answering 503", type(error).__name__)
        return await _api_error(request, service_unavailable())

    for kind in (
        OSError,
        sa_exc.SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        RPCError,
    ):
        app.add_exception_handler(kind, _dependency)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        if is_outage(error):  # wrapped in something else on its way up
            return await _dependency(request, error)
        log.error("unhandled error: %s", type(error).__name__, exc_info=error)
        body = {
            "error": {
                "type": "api_error",
                "code": "internal_error",
                "message": "An internal error occurred; it has been logged.",
                "param": None,
            }
        }
        return JSONResponse(body, status_code=500)
