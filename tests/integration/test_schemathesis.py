"""The OpenAPI document against the real stack: Schemathesis generates requests for every
operation from `/openapi.json`, they are signed as a merchant signs them, sent over HTTP to
the stack's API (Postgres, Temporal, workers and the card-network simulator behind it), and
every answer goes through Schemathesis's response conformance checks. Nothing may be found.

What each operation gets (all bounded, generation derandomized so a run is repeatable):
* the examples the document gives, as they stand;
* positive and negative generated requests, with the path's `{id}` either generated (a 404)
  or one of the merchant's real objects, and one request in ten left unsigned (a 401);
* a body over the size limit (413), and, on a second API process of the same stack with a
  rate limit of one request per 100 s, a request of a key that spent its burst (429);
* known outcomes on fresh objects, each asserted: the approved, declined and held test cards
  (200, 402, 202), a capture, a cancel, a refund, a secret rotation (200), a webhook
  endpoint (201), and one Idempotency-Key sent twice at once (409).
Health probes have no negative mode (nothing to make invalid): the run notes it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from client.signing import signed_headers
from core.crypto import canonical_path_and_query
from tests.integration.test_api_limits import SLOW_RATE, api_process
from tests.stack import RunningStack

pytestmark = pytest.mark.integration

CHECKS: dict[str, Callable[..., Any]] = {
    "status_code_conformance": status_code_conformance,
    "content_type_conformance": content_type_conformance,
    "response_headers_conformance": response_headers_conformance,
    "response_schema_conformance": response_schema_conformance,
    # Documenting 500 must not make a crash pass: any 5xx in this run is a finding.
    "not_a_server_error": not_a_server_error,
}
# Per operation and generation mode. Small: 22 operations, a loaded 2-core machine, and what
# matters here is each status an operation answers, not deep fuzzing of one.
MAX_EXAMPLES = 6
UNSIGNED_SHARE = 10  # one request in this many goes without a signature
MAX_BODY_BYTES = 65_536  # the stack's DURAPAY_MAX_BODY_BYTES (the default)
DECLINED_CARD = "4000000000000002"
HELD_CARD = "4000000000001018"  # held past the adapter's timeout: the charge answers 202
APPROVED_CARD = "4242424242424242"


class SignedRequest(requests.auth.AuthBase):
    """Signs a request as `client.sign` does, over what `requests` will send: the method, the
    path and query as they go on the wire, and the body bytes after serialization."""

    def __init__(self, public_key: str, secret_key: str) -> None:
        self.public_key = public_key
        self.secret_key = secret_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        assert isinstance(body, str | bytes)  # a prepared request's body, never a stream
        raw_path, _, query = (request.path_url or "/").partition("?")
        request.headers.update(
            signed_headers(
                public_key=self.public_key,
                secret_key=self.secret_key,
                method=request.method or "GET",
                path_and_query=canonical_path_and_query(raw_path.encode(), query.encode()),
                body=body.encode() if isinstance(body, str) else body,
            )
        )
        return request


class AdminToken(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


@dataclass
class Tally:
    """What the run did and found, printed at its end."""

    calls: Counter[str] = field(default_factory=Counter)  # per operation
    phases: Counter[str] = field(default_factory=Counter)  # examples, positive, negative, …
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)  # per check
    distinct: dict[tuple[str, str, int], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # two requests run at once

    def record(self, case: Case, response: schemathesis.Response, phase: str) -> None:
        with self.lock:
            self._record(case, response, phase)

    def _record(self, case: Case, response: schemathesis.Response, phase: str) -> None:
        label = case.operation.label
        self.calls[label] += 1
        self.phases[phase] += 1
        self.statuses.setdefault(label, Counter())[response.status_code] += 1
        for name, check in CHECKS.items():
            try:
                case.validate_response(response, checks=[check])
            except FailureGroup as group:
                self.failures[name] += 1
                first = group.exceptions[0]
                self.distinct.setdefault(
                    (label, name, response.status_code), f"{first.title}: {first.message}"[:300]
                )

    def report(self) -> str:
        lines = [
            f"[schemathesis] operations tested: {len(self.calls)}, "
            f"requests checked: {sum(self.calls.values())} ({dict(self.phases)}), "
            f"failing responses per check: {dict(self.failures) or 0}, "
            f"distinct findings (operation, check, status): {len(self.distinct)}"
        ]
        for label in sorted(self.calls):
            statuses = ", ".join(f"{s}x{n}" for s, n in sorted(self.statuses[label].items()))
            lines.append(f"  {label}: {self.calls[label]} requests ({statuses})")
        lines.extend(f"  NOTE {note}" for note in self.notes)
        for (label, check, status), message in sorted(self.distinct.items()):
            lines.append(f"  FINDING {label} {check} {status}: {message}")
        return "\n".join(lines)


@dataclass
class Objects:
    """The merchant's real objects, for the `{id}` of the paths that name one."""

    payment_intents: list[str]
    webhook_endpoints: list[str]
    doomed_endpoints: list[str]  # for DELETE, so that the other operations find live ones
    events: list[str]
    merchants: list[str]  # a merchant of its own: rolling its keys must not lock us out

    def for_operation(self, operation: schemathesis.APIOperation) -> list[str]:
        if "{id}" not in operation.path:
            return []
        if operation.method.upper() == "DELETE":
            return self.doomed_endpoints
        return {
            "payment-intents": self.payment_intents,
            "webhook-endpoints": self.webhook_endpoints,
            "events": self.events,
            "merchants": self.merchants,
        }[operation.path.split("/")[1]]


def onboard(stack: RunningStack, name: str) -> dict[str, Any]:
    response = requests.post(
        f"{stack.api_url}/merchants",
        json={"name": name},
        auth=AdminToken(stack.admin_token),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


class Shop:
    """Plain signed requests for the setup (not checked: the run below checks)."""

    def __init__(self, base_url: str, keys: dict[str, Any]) -> None:
        self.base_url = base_url
        self.auth = SignedRequest(keys["publicKey"], keys["secretKey"])

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(
            f"{self.base_url}{path}",
            data=json.dumps(body),
            timeout=30,
            headers={"Content-Type": "application/json"},
            auth=self.auth,
        )

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", timeout=30, auth=self.auth)

    def intent(self, **extra: Any) -> str:
        response = self.post(
            "/payment-intents", {"amountInCents": 2499, "currency": "usd", **extra}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def charged(self, number: str = APPROVED_CARD, expected: int = 200, **extra: Any) -> str:
        intent_id = self.intent(**extra)
        response = self.post(f"/payment-intents/{intent_id}/transactions", charge_body(number))
        assert response.status_code == expected, response.text
        return intent_id

    def endpoint(self) -> str:
        # Allowed on the local stack (private addresses); nothing listens there, and the
        # deliveries' failures are retried in the background, harmlessly.
        response = self.post(
            "/webhook-endpoints", {"url": "https://127.0.0.1:9/hooks", "enabledEvents": ["*"]}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def charge_body(number: str) -> dict[str, Any]:
    return {
        "type": "charge",
        "card": {"number": number, "expMonth": 12, "expYear": 2030, "cvc": "123"},
    }


def real_objects(stack: RunningStack, shop: Shop) -> Objects:
    intents = [
        shop.intent(),
        shop.charged(),
        shop.charged(captureMethod="manual"),
        shop.charged(DECLINED_CARD, 402),
    ]
    events = [e["id"] for e in shop.get("/events?limit=5").json()["data"]]
    victim = onboard(stack, f"Keys rolled {uuid.uuid4().hex[:6]}")
    return Objects(
        payment_intents=intents,
        webhook_endpoints=[shop.endpoint(), shop.endpoint()],
        doomed_endpoints=[shop.endpoint(), shop.endpoint()],
        events=events,
        merchants=[victim["id"]],
    )


def known_outcomes(shop: Shop, schema: schemathesis.BaseSchema) -> Iterator[tuple[Case, int]]:
    """Cases whose answer is known, on objects made for them: the success and decline answers
    that generated data reaches only by luck."""
    # An OpenAPI schema has it; schemathesis types the base class.
    by_id = schema.find_operation_by_id  # type: ignore[attr-defined]
    charge = by_id("payment-intents-transactions-create")
    for number, status in ((APPROVED_CARD, 200), (DECLINED_CARD, 402), (HELD_CARD, 202)):
        yield (
            charge.Case(
                path_parameters={"id": shop.intent()},
                media_type="application/json",
                body=charge_body(number),
            ),
            status,
        )
    yield (
        by_id("payment-intents-capture").Case(
            path_parameters={"id": shop.charged(captureMethod="manual")},
            media_type="application/json",
            body={"amountInCents": 1000},
        ),
        200,
    )
    yield (
        by_id("payment-intents-cancel").Case(
            path_parameters={"id": shop.intent()},
            media_type="application/json",
            body={"cancellationReason": "abandoned"},
        ),
        200,
    )
    yield (
        by_id("payment-intents-refunds-create").Case(
            path_parameters={"id": shop.charged()},
            media_type="application/json",
            body={"amountInCents": 500},
        ),
        200,
    )
    yield (
        by_id("webhook-endpoints-create").Case(
            media_type="application/json",
            body={"url": "https://127.0.0.1:9/hooks", "enabledEvents": ["payment.succeeded"]},
        ),
        201,
    )
    yield (
        by_id("webhook-endpoints-rotate-secret").Case(
            path_parameters={"id": shop.endpoint()},
            media_type="application/json",
            body={"gracePeriodSeconds": 60},
        ),
        200,
    )


def auth_for(
    case: Case, *, merchant: SignedRequest, admin: AdminToken, signed: bool = True
) -> requests.auth.AuthBase | None:
    if not signed or case.path in ("/livez", "/readyz", "/healthz"):
        return None  # whatever Schemathesis generated for the auth headers goes as it is
    return admin if case.path.startswith("/merchants") else merchant


def cases_of(
    operation: schemathesis.APIOperation, mode: GenerationMode, objects: Objects
) -> Iterator[tuple[Case, bool]]:
    """`MAX_EXAMPLES` generated cases of `operation` (derandomized), each with whether to sign."""
    found: list[tuple[Case, bool]] = []
    pool = objects.for_operation(operation)

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def generate(case: Case, data: st.DataObject) -> None:
        if bool(pool) and data.draw(st.booleans(), label="real id"):
            case.path_parameters["id"] = data.draw(st.sampled_from(pool), label="id")
        signed = data.draw(st.integers(0, UNSIGNED_SHARE - 1), label="signed") != 0
        found.append((case, signed))

    try:
        generate()
    except hypothesis.errors.Unsatisfiable:
        # Negative mode on an operation without parameters or body: no invalid request to
        # make. The caller notes it; positive cases still run.
        assert mode == GenerationMode.NEGATIVE, operation.label
    yield from found


def examples_of(operation: schemathesis.APIOperation) -> Iterator[Case]:
    """The cases the document's examples make (parameters' and bodies')."""
    for strategy in operation.get_strategies_from_examples():
        yield first_of(strategy)


def first_of(strategy: st.SearchStrategy[Case]) -> Case:
    found: list[Case] = []

    @hypothesis.settings(
        max_examples=1,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def take(case: Case) -> None:
        found.append(case)

    take()
    return found[0]


def oversized(operation: schemathesis.APIOperation, objects: Objects) -> Case:
    pool = objects.for_operation(operation)
    path_parameters = {"id": pool[0] if pool else "missing"} if "{id}" in operation.path else {}
    return operation.Case(path_parameters=path_parameters)


def test_every_answer_conforms_to_the_openapi_document(stack: RunningStack, tmp_path: Path) -> None:
    started = time.monotonic()
    keys = onboard(stack, f"Schemathesis {uuid.uuid4().hex[:6]}")
    shop = Shop(stack.api_url, keys)
    objects = real_objects(stack, shop)
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    merchant = SignedRequest(keys["publicKey"], keys["secretKey"])
    admin = AdminToken(stack.admin_token)
    tally = Tally()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) >= 20, [o.label for o in operations]

    def send(case: Case, phase: str, signed: bool = True, **kwargs: Any) -> schemathesis.Response:
        response = case.call(
            base_url=stack.api_url,
            timeout=30,
            auth=auth_for(case, merchant=merchant, admin=admin, signed=signed),
            **kwargs,
        )
        tally.record(case, response, phase)
        return response

    for operation in operations:
        for example in examples_of(operation):
            send(example, "examples")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            generated = list(cases_of(operation, mode, objects))
            if not generated:
                tally.notes.append(f"{operation.label}: nothing to generate in {mode.value} mode")
            for case, signed in generated:
                send(case, mode.value, signed=signed)
        # Over the size limit, whatever the operation: refused before anything reads it.
        too_large = send(
            oversized(operation, objects),
            "413",
            data=b"x" * (MAX_BODY_BYTES + 1),
            headers={"Content-Type": "application/json"},
        )
        assert too_large.status_code == 413, (operation.label, too_large.status_code)

    for case, expected in known_outcomes(shop, schema):
        assert send(case, "known outcomes").status_code == expected, case.operation.label
    # 409 `idempotency_key_in_use`: one key, two requests at once, while the network holds the
    # first one's charge (whichever claims the key first answers 202, the other 409).
    same_key = {"Idempotency-Key": f"schemathesis-{uuid.uuid4().hex}"}
    twice = schema.find_operation_by_id("payment-intents-transactions-create").Case(
        path_parameters={"id": shop.intent()},
        headers=same_key,
        media_type="application/json",
        body=charge_body(HELD_CARD),
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(
            pool.map(lambda case: send(case, "known outcomes").status_code, [twice, twice.derive()])
        )
    assert sorted(answers) == [202, 409], answers

    # A key that spent its burst, on an API process whose limit refills one token per 100 s.
    limited = onboard(stack, f"Rate limited {uuid.uuid4().hex[:6]}")
    limited_auth = SignedRequest(limited["publicKey"], limited["secretKey"])
    with api_process(
        stack, tmp_path / "api-limited.log", DURAPAY_RATE_LIMIT_PER_SECOND=SLOW_RATE
    ) as limited_url:
        assert (
            requests.get(f"{limited_url}/events", auth=limited_auth, timeout=30).status_code == 200
        )
        for operation in operations:
            if operation.path.startswith(("/merchants", "/livez", "/readyz", "/healthz")):
                continue  # the limit is per merchant key; these take none
            first_example: Case | None = next(examples_of(operation), None)
            case = first_example or oversized(operation, objects)
            response = case.call(base_url=limited_url, timeout=30, auth=limited_auth)
            tally.record(case, response, "429")
            assert response.status_code == 429, (operation.label, response.status_code)

    print(f"\n{tally.report()}\n[schemathesis] took {time.monotonic() - started:.1f} s")
    assert not tally.distinct, f"{len(tally.distinct)} findings: see the report above"
