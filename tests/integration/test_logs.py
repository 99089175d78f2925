"""Every Durapay process logs JSON lines (core/logs.py) into the stack's logs/ directory, and the
API writes one line per request carrying the caller's Request-Id."""

from __future__ import annotations

from typing import Any

import httpx

from client import DurapayClient, sign
from tests.integration.conftest import create_intent
from tests.integration.helpers import assert_eventually, log_lines
from tests.stack import RunningStack

# Our processes, by the log file the launcher gives each; Postgres and Temporal log as they do.
SERVICES = {"api": "api", "worker-1": "worker", "cardnet": "cardnet", "codec": "codec"}


async def test_every_line_of_every_durapay_process_is_a_json_object(
    stack: RunningStack, durapay: DurapayClient
) -> None:
    await create_intent(durapay)  # at least one request line in the API's log
    for child, service in SERVICES.items():
        lines = log_lines(stack, child)  # json.loads fails on any line that is not JSON
        assert lines, f"{child} logged nothing"
        for line in lines:
            assert line["service"] == service, line
            assert {"time", "level", "logger", "message"} <= line.keys(), line
    api = log_lines(stack, "api")
    assert any(line["logger"] == "uvicorn.error" for line in api)
    # `--no-access-log` holds: the request line replaces uvicorn's (which has the raw path
    # and query string).
    assert not any(line["logger"] == "uvicorn.access" for line in api)


async def test_the_api_logs_the_request_under_the_callers_request_id(
    stack: RunningStack, durapay: DurapayClient, merchant: dict[str, Any]
) -> None:
    intent = await create_intent(durapay)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        request = http.build_request(
            "GET",
            f"/payment-intents/{intent['id']}",
            headers={"Request-Id": "req_integration_log_test"},
        )
        sign(request, public_key=merchant["publicKey"], secret_key=merchant["secretKey"])
        response = await http.send(request)
    assert response.status_code == 200, response.text
    assert response.headers["Request-Id"] == "req_integration_log_test"

    async def logged() -> dict[str, Any]:
        found = [
            line
            for line in log_lines(stack, "api", strict=False)
            if line.get("requestId") == "req_integration_log_test"
            and line["logger"] == "durapay.api.requests"
        ]
        assert len(found) == 1, found
        return found[0]

    line = await assert_eventually(logged, timeout=10)
    assert (line["method"], line["route"], line["status"]) == ("GET", "/payment-intents/{id}", 200)
    assert line["paymentIntentId"] == intent["id"] and line["merchantId"] == merchant["id"]
