"""The OpenAPI document (`/openapi.json`, rendered at `/docs` and `/redoc`), made to describe
exactly what the API answers.

Routers state each operation's own answers with `errors(...)` (which error statuses it can
give, each with the error model of that status) and an `operationId` `<resource>-<verb>`
(`OPERATION_ID_PATTERN`). `install_openapi` adds what holds for every operation alike:
* the security schemes: the four headers of a signed merchant request, each an `apiKey`
  scheme, all four required together; the operator's bearer token on `/merchants`; none on
  the health probes;
* 408 and 413 (the body's time and size limits come before routing) and 500 on every
  operation, and the
  `Request-Id` and `Cache-Control: no-store` headers on every answer;
* a media-type `example` on every request body and answer, from the schemas' own (FastAPI
  drops their null fields; they are put back);
* no FastAPI 422: a request that fails validation answers 400 (`api/errors.py`).
The Schemathesis run (tests/integration/test_schemathesis.py) checks real answers against it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.deps import AUTHENTICATION_HEADERS
from api.schemas.base import ApiModel
from api.schemas.errors import (
    AuthenticationErrorResponse,
    ConflictErrorResponse,
    ErrorResponse,
    InternalErrorResponse,
    InvalidRequestErrorResponse,
    NotFoundErrorResponse,
    PaymentIntentCardErrorResponse,
    RateLimitErrorResponse,
    RequestTimeoutErrorResponse,
    RequestTooLargeErrorResponse,
    ServiceUnavailableErrorResponse,
    TransactionCardErrorResponse,
)

MERCHANT_SECURITY: list[dict[str, list[str]]] = [
    {"publicKey": [], "timestamp": [], "nonce": [], "signature": []}
]
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "publicKey": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Bearer pk_test_…`: the merchant's public key.",
    },
    "timestamp": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Timestamp",
        "description": "Unix seconds, within 300 s of the server's clock.",
    },
    "nonce": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Nonce",
        "description": "16 to 64 of `[A-Za-z0-9_-]`, never reused by a key within the window.",
    },
    "signature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": "`v1=` + lowercase hex HMAC-SHA256(secret key, METHOD \\n "
        "PATH_AND_QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA256(body)))"
        ": see *Authentication* above.",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator's token (`DURAPAY_ADMIN_TOKEN`).",
    },
}
# Retry-After on a 429 and a 503: whole seconds to wait.
RETRY_AFTER = {
    "Retry-After": {
        "required": True,
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
EVERY_ANSWER_HEADERS = {
    "Request-Id": {
        "required": True,
        "description": "This request's id (yours, if you sent a "
        "valid `Request-Id`); quote it to the operator.",
        "schema": {"type": "string", "pattern": "^req_[A-Za-z0-9_-]{1,64}$"},
    },
    "Cache-Control": {
        "required": True,
        "description": "Always `no-store`.",
        "schema": {"type": "string", "const": "no-store"},
    },
}
# status -> (model, description, headers). 402 is per operation (what the error holds).
ERROR_RESPONSES: dict[int, tuple[type[ApiModel], str, dict[str, Any]]] = {
    400: (
        InvalidRequestErrorResponse,
        "Invalid request: a parameter is missing, unknown or "
        "invalid (`param` names it), or the body is not JSON.",
        {},
    ),
    401: (
        AuthenticationErrorResponse,
        "Authentication failed: missing, unknown or revoked key, "
        "bad signature, stale timestamp, replayed nonce.",
        {},
    ),
    404: (
        NotFoundErrorResponse,
        "No such object (another merchant's objects answer the same).",
        {},
    ),
    409: (
        ConflictErrorResponse,
        "Conflict: a request with this Idempotency-Key is still "
        "running, or the object's state does not allow the operation.",
        {},
    ),
    408: (
        RequestTimeoutErrorResponse,
        "The body did not arrive within the time limit "
        "(`DURAPAY_REQUEST_BODY_TIMEOUT_SECONDS`); the connection is closed.",
        {},
    ),
    413: (
        RequestTooLargeErrorResponse,
        "The body is over the size limit (refused before authentication).",
        {},
    ),
    429: (
        RateLimitErrorResponse,
        "This API key is over its rate limit (on `/merchants`: "
        "too many failed admin-token attempts).",
        RETRY_AFTER,
    ),
    500: (InternalErrorResponse, "An unexpected error; it is logged with the Request-Id.", {}),
    503: (
        ServiceUnavailableErrorResponse,
        "Postgres or Temporal is briefly unreachable; "
        "retry after `Retry-After` (a POST with the same Idempotency-Key).",
        RETRY_AFTER,
    ),
}
CARD_ERRORS: dict[str, type[ApiModel]] = {
    "transaction": TransactionCardErrorResponse,
    "paymentIntent": PaymentIntentCardErrorResponse,
}
ON_EVERY_OPERATION = (408, 413, 500)
# operationIds: `<resource>-<verb>`, the resource named as its path names it (nested ones
# with their parent: `payment-intents-refunds-create`), the verb one of the standard ones or
# the action the path ends in (`capture`, `redeliver`, `rotate-secret`, `roll`).
OPERATION_ID_PATTERN = r"^[a-z]+(-[a-z]+)*-[a-z]+$"
IDEMPOTENCY_KEY_DESCRIPTION = (
    "1 to 255 printable ASCII characters. The same key with the same body replays the first "
    "answer; with another body it is a 400 `idempotency_key_reused`; while the first request "
    "runs, a 409 `idempotency_key_in_use`. Kept 24 h (`DURAPAY_IDEMPOTENCY_RETENTION_SECONDS`)."
)


def errors(
    *statuses: int, card_error_holds: str | None = None, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each of `statuses` with its error model. `card_error_holds`:
    the object a 402 carries (`transaction` or `paymentIntent`); `described`: this
    operation's own words for a status (its 202, or when exactly its 409 happens)."""
    described = described or {}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status == 402:
            assert card_error_holds is not None, "a 402 says what it holds"
            model: type[ApiModel] = CARD_ERRORS[card_error_holds]
            description = "The card network declined it: `card_error` with `declineCode`."
            headers: dict[str, Any] = {}
        elif status in ERROR_RESPONSES:
            model, description, headers = ERROR_RESPONSES[status]
        else:  # a success status (202), described by the route
            responses[status] = {"description": described[status]}
            continue
        responses[status] = {
            "model": model,
            "description": described.get(status, description),
            **({"headers": headers} if headers else {}),
        }
    return responses


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json`) the document described above: FastAPI's
    own (which it caches, and builds again if routes are added), finished once per build."""
    generate = app.openapi
    finished: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        spec = generate()
        if not finished or finished[0] is not spec:
            finish_openapi(spec)
            finished[:] = [spec]
        return spec

    # FastAPI's documented way to shape the schema: replace the method on the instance.
    app.openapi = openapi  # type: ignore[method-assign]


def finish_openapi(spec: dict[str, Any]) -> None:
    """Add to the document FastAPI generated what it cannot know (see the module's doc)."""
    components = spec.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    schemas = components.setdefault("schemas", {})
    # The models of the answers every operation can give, which no route names itself, and
    # the error object in general (every `type`).
    models: list[type[BaseModel]] = [
        ErrorResponse,
        *(ERROR_RESPONSES[status][0] for status in ON_EVERY_OPERATION),
    ]
    _, definitions = models_json_schema(
        [(model, "serialization") for model in models], ref_template="#/components/schemas/{model}"
    )
    schemas.update(definitions.get("$defs", {}))
    # FastAPI drops every null-valued key from the document, examples' included (`lastError:
    # null` would go missing, and the example no longer fit its schema): put them back.
    for name, model_examples in _examples_by_model().items():
        if name in schemas:
            schemas[name]["examples"] = model_examples
    for path in spec["paths"].values():
        for operation in path.values():
            _finish_operation(operation, schemas)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def _finish_operation(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    # FastAPI lists the headers the authentication dependencies read as parameters: they say
    # which scheme the operation takes, and then give way to it.
    signed = {name.lower() for name in AUTHENTICATION_HEADERS}
    headers = {p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"}
    if "x-signature" in headers:
        operation["security"] = MERCHANT_SECURITY  # api.deps.authenticate_merchant
    elif "authorization" in headers:
        operation["security"] = ADMIN_SECURITY  # api.deps.require_admin
    else:
        operation["security"] = []  # the health probes
    parameters = [
        p
        for p in operation.get("parameters", [])
        if not (p["in"] == "header" and p["name"].lower() in signed)
    ]
    for parameter in parameters:
        if parameter["in"] == "header" and parameter["name"].lower() == "idempotency-key":
            parameter["description"] = IDEMPOTENCY_KEY_DESCRIPTION
            parameter["schema"] = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}
    if parameters:
        operation["parameters"] = parameters
    else:
        operation.pop("parameters", None)
    responses = operation["responses"]
    responses.pop("422", None)
    for status in ON_EVERY_OPERATION:
        model, description, _ = ERROR_RESPONSES[status]
        responses.setdefault(
            str(status),
            {
                "description": description,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                    }
                },
            },
        )
    for answer in responses.values():
        answer["headers"] = {**answer.get("headers", {}), **EVERY_ANSWER_HEADERS}
        media = answer.get("content", {}).get("application/json")
        if media is not None:
            _add_example(media, schemas)
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        _add_example(body, schemas)


def _add_example(media: dict[str, Any], schemas: dict[str, Any]) -> None:
    if "example" in media or "examples" in media:
        return
    example = _example_of(media.get("schema", {}), schemas)
    if example is not None:
        media["example"] = example


def _example_of(schema: dict[str, Any], schemas: dict[str, Any]) -> Any:
    """The schema's first example; for a list envelope, a page holding its item's example."""
    for option in schema.get("anyOf", []):  # an optional body: `X | None`
        found = _example_of(option, schemas)
        if found is not None:
            return found
    ref = schema.get("$ref")
    if ref is None:
        return None
    target = schemas[ref.rsplit("/", 1)[-1]]
    if target.get("examples"):
        return target["examples"][0]
    data = target.get("properties", {}).get("data", {})
    if target.get("properties", {}).get("object", {}).get("const") == "list":
        item = _example_of(data.get("items", {}), schemas)
        return {"object": "list", "data": [] if item is None else [item], "hasMore": False}
    return None


def _examples_by_model() -> dict[str, list[Any]]:
    """The examples each API schema model gives (`json_schema_extra`), by model name, which
    is its name in the document."""
    found: dict[str, list[Any]] = {}
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        extra = model.model_config.get("json_schema_extra")
        if (
            model.__module__.startswith("api.schemas.")
            and isinstance(extra, dict)
            and isinstance(examples := extra.get("examples"), list)
        ):
            found[model.__name__] = examples
    return found
