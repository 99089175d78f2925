"""core/metrics.py and the pure parts of the workers' health server: which counter a recorded
fact moves, the labels a client cannot invent, and the readiness answer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from activities.webhooks import SentAttempt, attempt_result
from core.domain import NetworkOutcome
from core.metrics import (
    API_REGISTRY,
    WORKER_REGISTRY,
    DatabaseGauges,
    DatabaseSnapshot,
    count_recorded_outcome,
    observe_request,
    outcome_label,
)
from core.readiness import readiness
from workers.health_server import HealthServer, _request_line


def value(name: str, registry: CollectorRegistry = WORKER_REGISTRY, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"{name}{labels} does not exist"
    return float(found)


def worker_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in WORKER_REGISTRY.collect()
        if family.name.startswith("durapay_")
        for s in family.samples
    }


def changed_by(before: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    """The series that moved since `before`, by how much."""
    return {
        f"{name}{dict(labels)}": delta
        for (name, labels), now in worker_samples().items()
        if (delta := now - before.get((name, labels), 0.0))
    }


@pytest.mark.parametrize(
    ("kind", "outcome", "intent_status", "label"),
    [
        ("charge", NetworkOutcome.APPROVED, "succeeded", "succeeded"),
        ("charge", NetworkOutcome.APPROVED, "requires_capture", "requires_capture"),
        ("charge", NetworkOutcome.DECLINED, "failed", "declined"),
        ("charge", NetworkOutcome.FAILED, "failed", "failed"),
        ("charge", NetworkOutcome.UNKNOWN, "processing", "unknown"),
        ("capture", NetworkOutcome.APPROVED, "succeeded", "succeeded"),
        ("refund", NetworkOutcome.APPROVED, "partially_refunded", "succeeded"),
        ("void", NetworkOutcome.DECLINED, "requires_capture", "declined"),
    ],
)
def test_outcome_label_names_what_the_merchant_sees(
    kind: str, outcome: NetworkOutcome, intent_status: str, label: str
) -> None:
    assert (
        outcome_label(transaction_type=kind, outcome=outcome, intent_status=intent_status) == label
    )


def test_a_direct_answer_moves_only_its_outcome() -> None:
    before = worker_samples()
    count_recorded_outcome(
        transaction_type="charge",
        status_before="pending",
        outcome=NetworkOutcome.APPROVED,
        intent_status="succeeded",
        operator_verdict=False,
    )
    assert changed_by(before) == {"durapay_charges_total{'outcome': 'succeeded'}": 1}


def test_a_lost_answer_counts_unknown_and_an_opened_unknown_outcome() -> None:
    before = worker_samples()
    count_recorded_outcome(
        transaction_type="capture",
        status_before="pending",
        outcome=NetworkOutcome.UNKNOWN,
        intent_status="requires_capture",
        operator_verdict=False,
    )
    assert changed_by(before) == {
        "durapay_operations_total{'outcome': 'unknown', 'type': 'capture'}": 1,
        "durapay_unknown_outcomes_opened_total{'type': 'capture'}": 1,
    }


def test_settling_an_unknown_outcome_counts_the_truth_and_who_settled_it() -> None:
    before = worker_samples()
    count_recorded_outcome(
        transaction_type="charge",
        status_before="timeout",
        outcome=NetworkOutcome.APPROVED,
        intent_status="requires_capture",
        operator_verdict=False,
    )
    count_recorded_outcome(
        transaction_type="refund",
        status_before="timeout",
        outcome=NetworkOutcome.FAILED,
        intent_status="succeeded",
        operator_verdict=True,
    )
    assert changed_by(before) == {
        "durapay_charges_total{'outcome': 'requires_capture'}": 1,
        "durapay_unknown_outcomes_settled_total{'by': 'network', 'outcome': 'succeeded', "
        "'type': 'charge'}": 1,
        "durapay_operations_total{'outcome': 'failed', 'type': 'refund'}": 1,
        "durapay_unknown_outcomes_settled_total{'by': 'operator', 'outcome': 'failed', "
        "'type': 'refund'}": 1,
    }


def test_every_fixed_series_exists_at_zero_before_its_first_event() -> None:
    """So `increase()` sees the first event and an alert on a series is never blind."""
    assert (
        value(
            "durapay_unknown_outcomes_settled_total", type="void", outcome="declined", by="operator"
        )
        >= 0
    )
    assert value("durapay_reconciliation_discrepancies_opened_total", kind="stuck_unsettled") >= 0
    assert value("durapay_webhook_attempts_total", result="url_refused") >= 0
    assert value("durapay_reconciliation_sweeps_total", trigger="schedule") >= 0


def test_a_method_a_client_invents_is_counted_as_other() -> None:
    labels = {"route": "unmatched", "status": "404"}
    before = (
        API_REGISTRY.get_sample_value("durapay_http_requests_total", {**labels, "method": "other"})
        or 0.0
    )
    observe_request(route="unmatched", method="BREW", status=404, seconds=0.001)
    assert (
        value("durapay_http_requests_total", API_REGISTRY, method="other", **labels) == before + 1
    )
    assert (
        API_REGISTRY.get_sample_value("durapay_http_requests_total", {**labels, "method": "BREW"})
        is None
    )


def test_the_api_registry_holds_no_business_counter() -> None:
    names = {family.name for family in API_REGISTRY.collect()}
    assert "durapay_http_requests" in names and "durapay_charges" not in names


@pytest.mark.parametrize(
    ("status_code", "error", "result"),
    [
        (200, None, "delivered"),
        (204, None, "delivered"),
        (410, None, "gone"),
        (500, None, "http_error"),
        (302, "redirect_not_followed", "http_error"),
        (None, "timeout: no answer within 10 s", "timeout"),
        (None, "connection_error: ConnectError", "network_error"),
        (None, "private_address: resolves to 10.0.0.1", "url_refused"),
    ],
)
def test_webhook_attempt_results(status_code: int | None, error: str | None, result: str) -> None:
    sent = SentAttempt(
        "whd_1",
        1,
        endpoint_id="we_1",
        attempted_at=datetime.now(UTC),
        status_code=status_code,
        error=error,
    )
    assert attempt_result(sent) == result


def test_database_gauges_show_a_snapshot_and_nothing_without_one() -> None:
    gauges = DatabaseGauges()
    assert list(gauges.collect()) == []
    gauges.snapshot = DatabaseSnapshot(3, {"stuck_unsettled": 2})
    families = {family.name: family for family in gauges.collect()}
    assert families["durapay_manual_reviews_open"].samples[0].value == 3
    open_items = {
        s.labels["kind"]: s.value
        for s in families["durapay_reconciliation_discrepancies_open"].samples
    }
    assert open_items["stuck_unsettled"] == 2 and open_items["amount_mismatch"] == 0


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/metrics")),
        (b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n", ("GET", "/readyz")),
        (b"HEAD /livez HTTP/1.1\r\n\r\n", ("HEAD", "/livez")),
        (b"GET /metrics\r\n\r\n", ("GET", None)),
        (b"GET /metrics SPDY/3\r\n\r\n", ("GET", None)),
    ],
)
def test_request_lines(head: bytes, parsed: tuple[str, str | None]) -> None:
    assert _request_line(head) == parsed


async def test_readyz_names_what_is_down() -> None:
    async def up() -> bool:
        return True

    async def down() -> bool:
        return False

    # No database: the checks given stand in for it.
    server = HealthServer(
        checks={"postgres": down, "temporal": up},
        sessions=None,  # type: ignore[arg-type]
        sdk_metrics_url=None,
    )
    try:
        refused = await server.answer("/readyz")
        server._checks["postgres"] = up
        ready = await server.answer("/readyz")
        live = await server.answer("/livez")
    finally:
        await server.close()
    assert refused.status == 503
    assert refused.body == (
        b'{"status": "unavailable", "checks": {"postgres": "down", '
        b'"temporal": "ok"}, "down": ["postgres"]}'
    )
    assert (ready.status, live.status) == (200, 200)


def test_a_lost_slot_is_reported_lost_and_its_freed_wal_not_as_lag() -> None:
    gauges = DatabaseGauges()
    gauges.snapshot = DatabaseSnapshot(
        0,
        {},
        slot_lag_bytes={"kept": 4096, "gone": 9_000_000_000},
        slot_consumer={"kept": True, "gone": False},
        slot_lost={"kept": False, "gone": True},
    )
    families = {family.name: family for family in gauges.collect()}
    samples = {
        name: {s.labels["slot"]: s.value for s in families[name].samples}
        for name in ("durapay_event_stream_lag_bytes", "durapay_event_stream_slot_lost")
    }
    assert samples["durapay_event_stream_lag_bytes"] == {"kept": 4096}
    assert samples["durapay_event_stream_slot_lost"] == {"kept": 0, "gone": 1}


async def test_readyz_carries_a_warning_without_turning_unready() -> None:
    async def up() -> bool:
        return True

    async def says(message: str | None) -> str | None:
        return message

    async def fails() -> str | None:
        raise OSError("database gone")

    body, down = await readiness(
        {"postgres": up},
        {
            "slots": lambda: says("max_slot_wal_keep_size = -1"),
            "quiet": lambda: says(None),
            "broken": fails,
        },
    )
    assert down == [] and body["status"] == "ok"
    assert body["warnings"] == {"slots": "max_slot_wal_keep_size = -1"}
    body, _ = await readiness({"postgres": up}, {"quiet": lambda: says(None)})
    assert "warnings" not in body
