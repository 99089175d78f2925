"""core/logs.py: one JSON object per line, with the ids known where the line is written."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from core.logs import (
    UVICORN_LOGGERS,
    JsonFormatter,
    RequestContext,
    configure_logging,
    request_context,
)

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _record(
    message: str = "hello %s", *args: Any, level: int = logging.INFO, **extra: Any
) -> logging.LogRecord:
    record = logging.LogRecord(
        "durapay.test", level, __file__, 1, message, args or ("world",), None
    )
    record.__dict__.update(extra)
    return record


def _line(record: logging.LogRecord, service: str = "worker") -> dict[str, Any]:
    text = JsonFormatter(service).format(record)
    assert "\n" not in text  # one line per record
    return json.loads(text)


def test_a_line_has_time_level_logger_message_and_service() -> None:
    line = _line(_record(level=logging.WARNING))
    assert RFC3339_UTC.fullmatch(line.pop("time"))
    assert line == {
        "level": "WARNING",
        "logger": "durapay.test",
        "message": "hello world",
        "service": "worker",
    }


def test_the_request_context_adds_its_ids() -> None:
    token = request_context.set(
        RequestContext("req_abc", merchant_id="mer_1", payment_intent_id="pi_2", trace_id="0af7")
    )
    try:
        line = _line(_record())
    finally:
        request_context.reset(token)
    assert (line["requestId"], line["merchantId"], line["paymentIntentId"], line["traceId"]) == (
        "req_abc",
        "mer_1",
        "pi_2",
        "0af7",
    )
    assert "requestId" not in _line(_record())  # outside a request: no ids


def test_quotes_newlines_and_non_ascii_stay_searchable() -> None:
    message = 'payment pi_1 needs manual review: "timeout"\ncafé ✓'
    text = JsonFormatter("worker").format(_record("%s", message))
    assert "needs manual review" in text and "café ✓" in text  # not \u-escaped
    assert json.loads(text)["message"] == message


def test_an_exception_is_one_string_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(exc_info=sys.exc_info())
    line = _line(record)
    assert line["exc_info"].startswith("Traceback")
    assert "ValueError: boom" in line["exc_info"]


def test_only_named_fields_are_written_never_other_extras() -> None:
    line = _line(
        _record(
            fields={"status": 200},
            authorization="Bearer sk_secret",
            body='{"number": "4242424242424242"}',
        )
    )
    assert line["status"] == 200
    assert "sk_secret" not in json.dumps(line) and "4242" not in json.dumps(line)


def test_fields_cannot_overwrite_the_standard_keys() -> None:
    line = _line(_record(fields={"level": "forged", "message": "forged"}))
    assert (line["level"], line["message"]) == ("INFO", "hello world")


def test_workflow_logger_details_give_the_workflow_id() -> None:
    line = _line(_record(temporal_workflow={"workflow_id": "pi_123", "run_id": "r"}))
    assert (line["workflowId"], line["paymentIntentId"]) == ("pi_123", "pi_123")


async def test_inside_an_activity_any_logger_gets_the_workflow_and_activity() -> None:
    @activity.defn
    async def an_activity() -> dict[str, Any]:
        return _line(_record())

    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        environment.info, workflow_id="pi_9", activity_type="record_transition"
    )
    line = await environment.run(an_activity)
    assert (line["workflowId"], line["paymentIntentId"], line["activity"]) == (
        "pi_9",
        "pi_9",
        "record_transition",
    )


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    uvicorn = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in UVICORN_LOGGERS
    }
    # An app built earlier in this process (a tests/api test in the same xdist worker) left
    # warnings captured: configure_logging would then keep the `showwarning` it found, this
    # test's own recorder from pytest rather than logging's.
    logging.captureWarnings(False)
    yield root
    logging.captureWarnings(False)  # configure_logging turns it on
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (saved, propagate) in uvicorn.items():
        logging.getLogger(name).handlers[:] = saved
        logging.getLogger(name).propagate = propagate


def test_configure_logging_twice_keeps_one_json_handler_and_routes_uvicorn(
    clean_root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(io.StringIO()))
    logging.getLogger("uvicorn.error").propagate = False
    configure_logging("api")
    configure_logging("api", level="warning")
    ours = [h for h in clean_root.handlers if getattr(h, "durapay_json", False)]
    assert len(ours) == 1
    assert clean_root.level == logging.WARNING
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)  # the handler writes to stderr as it is now
    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 42)
    [text] = stderr.getvalue().splitlines()
    line = json.loads(text)
    assert (line["logger"], line["message"], line["service"]) == (
        "uvicorn.error",
        "Started server process [42]",
        "api",
    )


def test_configure_logging_keeps_a_switched_off_access_log_off(clean_root: logging.Logger) -> None:
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False  # what uvicorn's `--no-access-log` does
    configure_logging("api")
    assert not access.hasHandlers()


def test_python_warnings_become_json_lines(
    clean_root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("worker")
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a deprecated thing", DeprecationWarning, stacklevel=1)
    [text] = stderr.getvalue().splitlines()
    line = json.loads(text)
    assert (line["logger"], line["level"]) == ("py.warnings", "WARNING")
    assert "a deprecated thing" in line["message"]
