"""Logging for every Durapay process: one JSON object per line, on stderr.

Each line has `time` (RFC 3339, UTC), `level`, `logger`, `message` and `service`, and, where
known, `requestId`, `merchantId`, `paymentIntentId`, `workflowId`, `activity`, `traceId` and
`spanId` (the current OpenTelemetry span's, when tracing is on; else `traceId` of the request's
W3C `traceparent`).
The API's middleware puts the request's ids in a contextvar (`request_context`); inside a
Temporal activity the ids come from `activity.info()`, and `workflow.logger` lines carry the
SDK's own `temporal_workflow` details. Messages are kept as the code wrote them (searches over
the logs still match); JSON escapes only quotes, backslashes and control characters
(`ensure_ascii=False`), so non-ASCII text is written as is.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from temporalio import activity

# The loggers uvicorn configures for itself (their own handlers, propagate=False): we send
# them through the root handler so their lines are JSON too.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@dataclass
class RequestContext:
    """One API request's ids. Mutable on purpose: the middleware sets it before the app runs,
    and authentication fills `merchant_id` in; a contextvar set inside a dependency would not
    reach back out to the middleware that writes the request's log line."""

    request_id: str
    merchant_id: str | None = None
    payment_intent_id: str | None = None
    trace_id: str | None = None


request_context: ContextVar[RequestContext | None] = ContextVar(
    "durapay_request_context", default=None
)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        line.update(_known_ids(record))
        fields = getattr(record, "fields", None)  # `extra={"fields": {...}}`: structured data
        if isinstance(fields, dict):
            line.update({key: value for key, value in fields.items() if key not in line})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _known_ids(record: logging.LogRecord) -> dict[str, str]:
    ids: dict[str, str] = {}
    context = request_context.get()
    if context is not None:
        ids["requestId"] = context.request_id
        if context.merchant_id:
            ids["merchantId"] = context.merchant_id
        if context.payment_intent_id:
            ids["paymentIntentId"] = context.payment_intent_id
        if context.trace_id:
            ids["traceId"] = context.trace_id
    # The current span's ids, when tracing is on (core/telemetry.py): the trace this line
    # belongs to, even where no request is (a workflow, an activity, the simulator).
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        ids["traceId"] = trace.format_trace_id(span.trace_id)
        ids["spanId"] = trace.format_span_id(span.span_id)
    # workflow.logger's lines carry the SDK's details as `temporal_workflow` (a dict).
    details = getattr(record, "temporal_workflow", None)
    if isinstance(details, dict) and details.get("workflow_id"):
        ids["workflowId"] = str(details["workflow_id"])
    elif activity.in_activity():  # any logger, inside an activity: cheap, no I/O
        info = activity.info()
        ids["workflowId"] = info.workflow_id or ""
        ids["activity"] = info.activity_type
    if ids.get("workflowId", "").startswith("pi_") and "paymentIntentId" not in ids:
        # A payment's workflow id is its intent id (api/payment_workflow.py).
        ids["paymentIntentId"] = ids["workflowId"]
    return {key: value for key, value in ids.items() if value}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the line (as logging's own last-resort
    handler does), not the stream of the moment it was made: pytest swaps stderr per test."""

    durapay_json: bool  # marks the handler configure_logging installs

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def configure_logging(service: str, level: int | str = logging.INFO) -> None:
    """JSON lines on stderr for this process's root logger and uvicorn's. Safe to call twice
    (replaces the handler it installed; leaves other handlers, e.g. pytest's, alone)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "durapay_json", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.durapay_json = True
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # `warnings.warn` writes plain text to stderr otherwise: send it through the same lines.
    logging.captureWarnings(True)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.handlers and not logger.propagate:
            continue  # switched off (`--no-access-log` leaves uvicorn.access so): keep it off
        logger.handlers.clear()
        logger.propagate = True
