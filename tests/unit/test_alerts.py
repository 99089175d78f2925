"""deploy/prometheus/alerts.yml is exactly the "Alerts" table of docs/operations.md (the source
of truth: change the table, then the rules file to match), and every expression parses (with
promql-parser, which also type-checks function arguments) and names only metrics that
something we scrape exports: Durapay's registries (core/metrics.py), the Temporal SDK's
metrics that docs/operations.md names, and Prometheus's own `up`. A label an expression
matches on must be one the metric has and, where its values are a fixed set, a value it takes
(a misspelt `outcome` or `job` would make an alert that never fires). tests/unit/test_dashboard.py
checks the Grafana dashboard's expressions with the same helpers."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from core import metrics
from core.metrics import (
    API_REGISTRY,
    WORKER_REGISTRY,
    DatabaseGauges,
    DatabaseSnapshot,
    ScheduleGauges,
)
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
RULES_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"

SEVERITIES = ("page", "ticket")
ANNOTATIONS = {"summary", "description", "runbook"}
RULE_KEYS = {"alert", "expr", "for", "labels", "annotations"}
# Prometheus's own series for every target it scrapes.
PROMETHEUS_SERIES = frozenset({"up"})
# The sample names each kind of metric family exposes (prometheus_client drops `_total` from a
# counter family's name and adds it back on its sample).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
DURATION = re.compile(r"^(\d+[smhdwy])+$")
# Labels whose values are not a fixed set (deployment names, route templates, status codes):
# their names are checked, not their values.
OPEN_LABELS = frozenset({"slot", "schedule", "route", "method", "status", "instance"})
# (The parser's MatchOp compares equal but is not hashable.)
MATCH_OPS = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str


def markdown_section(text: str, heading: str) -> str:
    """The body under a heading line (`## Alerts`), up to the next heading of its level or
    above."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    start = lines.index(heading) + 1
    body = []
    for line in lines[start:]:
        marks = line.split(" ", 1)[0]
        if set(marks) == {"#"} and len(marks) <= len(level):
            break
        body.append(line)
    return "\n".join(body)


def table_rows(section: str) -> list[list[str]]:
    """The cells of the first Markdown table in `section`, header and rule left out. `\\|` is
    a `|` inside a cell (GitHub's rule, code spans included)."""
    rows: list[list[str]] = []
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [
            cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]
        ]
        rows.append(cells)
    return [cells for cells in rows[2:]]


def documented_alerts() -> list[Alert]:
    # The table ends the section's introduction; "What to do when each fires" follows it.
    section = markdown_section(OPERATIONS.read_text(), "## Alerts")
    alerts = []
    for cells in table_rows(section):
        assert len(cells) == 4, f"{cells[0]}: {len(cells)} cells (write a `|` in PromQL as `\\|`)"
        name, expr_cell, for_, severity_cell = cells
        code = re.fullmatch(r"`([^`]+)`", expr_cell)
        assert code, f"{name}: the PromQL cell must be one code span, got {expr_cell!r}"
        # "ticket (page if nobody on the team paused it)": the note is for the reader.
        severity, _, note = severity_cell.partition(" ")
        assert not note or re.fullmatch(r"\(.+\)", note), f"{name}: severity {severity_cell!r}"
        alerts.append(Alert(name, code.group(1), for_, severity))
    return alerts


def rules_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return loaded


def shipped_rules() -> list[dict[str, Any]]:
    return [rule for group in rules_file()["groups"] for rule in group["rules"]]


def shipped_alerts() -> list[Alert]:
    return [
        Alert(rule["alert"], rule["expr"], rule["for"], rule["labels"]["severity"])
        for rule in shipped_rules()
    ]


# ---- Which metric names exist ------------------------------------------------------------------
def sample_names(family_name: str, family_type: str) -> set[str]:
    return {family_name + suffix for suffix in SAMPLE_SUFFIXES.get(family_type, ("",))}


def collectors_with_something_to_say() -> list[Collector]:
    """The scrape-time collectors, each with a reading, since an empty one yields no family:
    the gauges read from Postgres (one replication slot), the schedule gauges (one
    schedule)."""
    database = DatabaseGauges()
    database.snapshot = DatabaseSnapshot(
        manual_reviews_open=0,
        discrepancies_open={},
        slot_lag_bytes={"durapay_events": 0},
        slot_consumer={"durapay_events": True},
        slot_lost={"durapay_events": False},
    )
    schedules = ScheduleGauges()

    async def one_schedule_running() -> Mapping[str, bool | None]:
        return {"durapay-reconciliation-sweep": False}

    asyncio.run(schedules.refresh(one_schedule_running))
    return [database, schedules]


def durapay_families() -> dict[str, set[str]]:
    """Every metric family the API's and the workers' registries expose: name -> sample
    names."""
    families: dict[str, set[str]] = {}
    for collector in (API_REGISTRY, WORKER_REGISTRY, *collectors_with_something_to_say()):
        for family in collector.collect():
            families.setdefault(family.name, set()).update(sample_names(family.name, family.type))
    return families


def temporal_sdk_names() -> set[str]:
    """The Temporal SDK's metrics docs/operations.md names (its table under "Workers: the
    Temporal SDK's metrics"). `a_available` / `_used` is two names; a histogram's samples are
    its `_bucket`, `_count` and `_sum` (the SDK adds no unit suffix: durations are seconds)."""
    section = markdown_section(OPERATIONS.read_text(), "### Workers: the Temporal SDK's metrics")
    names: set[str] = set()
    for name_cell, type_cell, _meaning in table_rows(section):
        previous = ""
        for token in re.findall(r"`([^`]+)`", name_cell):
            if token.startswith("_"):
                token = previous.rsplit("_", 1)[0] + token
            previous = token
            if token.endswith("*"):  # "the `temporal_long_request*` series": none is named
                continue
            names.add(token)
            if "histogram" in type_cell:
                names |= {token + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names


@functools.cache
def known_metric_names() -> frozenset[str]:
    ours = set().union(*durapay_families().values())
    return frozenset(ours | temporal_sdk_names() | PROMETHEUS_SERIES)


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value), metric name left out


def match_operator(op: promql_parser.MatchOp) -> str:
    return next(text for known, text in MATCH_OPS if known == op)


def selectors_in(expr: str) -> list[Selector]:
    """The series selectors of an expression. Raises ValueError if it does not parse (syntax,
    unknown function, wrong argument type) or selects series without naming a metric."""
    selectors: list[Selector] = []
    nameless: list[str] = []

    def visit(node: promql_parser.Expr) -> None:
        if not isinstance(node, promql_parser.VectorSelector):
            return
        matchers = [
            *node.matchers.matchers,
            *(m for group in node.matchers.or_matchers for m in group),
        ]
        name = node.name or next(
            (
                m.value
                for m in matchers
                if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
            ),
            None,
        )
        if name is None:
            nameless.append(str(node))
            return
        selectors.append(
            Selector(
                name,
                tuple(
                    (m.name, match_operator(m.op), m.value)
                    for m in matchers
                    if m.name != "__name__"
                ),
            )
        )

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    if nameless:
        raise ValueError(f"selectors without a metric name: {nameless}")
    return selectors


def metric_names_in(expr: str) -> set[str]:
    return {selector.metric for selector in selectors_in(expr)}


def unknown_metrics(exprs: Iterable[str]) -> set[str]:
    known = known_metric_names()
    return {name for expr in exprs for name in metric_names_in(expr)} - known


@functools.cache
def durapay_labels() -> dict[str, dict[str, set[str]]]:
    """Sample name -> its label names -> the values its series take: every value of a fixed
    vocabulary, since each such series exists from the start. A family without series yet
    (its labels come with requests) gives its label names with no values."""
    labels: dict[str, dict[str, set[str]]] = {}
    for collector in (API_REGISTRY, WORKER_REGISTRY, *collectors_with_something_to_say()):
        for family in collector.collect():
            for sample in family.samples:
                for label, value in sample.labels.items():
                    labels.setdefault(sample.name, {}).setdefault(label, set()).add(value)
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            assert metric._type is not None
            for name in sample_names(metric._name, metric._type):
                bucket_label = ("le",) if name.endswith("_bucket") else ()
                for label in (*metric._labelnames, *bucket_label):
                    labels.setdefault(name, {}).setdefault(label, set())
    return labels


def scrape_jobs() -> set[str]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


def matches_some(operator: str, pattern: str, values: set[str]) -> bool:
    """Whether a matcher can select one of `values`: each alternative of a regular expression
    must (a misspelt one would silently match nothing)."""
    if operator in ("=", "!="):
        return pattern in values
    alternatives = pattern.split("|") if "(" not in pattern else [pattern]
    return all(
        any(re.fullmatch(alternative, value) for value in values) for alternative in alternatives
    )


def label_problems(expr: str) -> list[str]:
    """Matchers on a label the metric does not have, or on a value it never takes: `job` of
    `up` against prometheus.yml's jobs, `task_queue` of the SDK's against Durapay's queue."""
    ours = durapay_labels()
    fixed_values = {
        "job": scrape_jobs(),
        "task_queue": {str(Settings.model_fields["task_queue"].default)},
    }
    problems = []
    for selector in selectors_in(expr):
        for label, operator, value in selector.matchers:
            if selector.metric in ours:
                has = ours[selector.metric]
                if label not in has:
                    problems.append(f"{selector.metric} has no label {label!r}")
                    continue
                values = set() if label in OPEN_LABELS else has[label]
            else:
                values = fixed_values.get(label, set())
            if values and not matches_some(operator, value, values):
                problems.append(
                    f"{selector.metric}{{{label}{operator}{value!r}}}: it takes {sorted(values)}"
                )
    return problems


# ---- The rules file ----------------------------------------------------------------------------
def test_shipped_rules_are_exactly_the_documented_alerts() -> None:
    documented, shipped = documented_alerts(), shipped_alerts()
    only_in_docs = [alert for alert in documented if alert not in shipped]
    only_in_rules = [alert for alert in shipped if alert not in documented]
    assert not only_in_docs and not only_in_rules, (
        "deploy/prometheus/alerts.yml differs from docs/operations.md's Alerts table:\n"
        f"  only in the table: {only_in_docs}\n  only in the rules: {only_in_rules}"
    )
    assert shipped == documented, "same alerts, another order: keep the table's order"
    assert len(documented) >= 20


def test_rules_file_has_the_shape_prometheus_loads() -> None:
    groups = rules_file()["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    for group in groups:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) == RULE_KEYS, rule.get("alert")
            assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
            assert DURATION.fullmatch(rule["for"]), rule["alert"]
            assert rule["labels"] == {"severity": rule["labels"]["severity"]}
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            assert set(rule["annotations"]) == ANNOTATIONS, rule["alert"]
            assert all(
                isinstance(text, str) and text.strip() for text in rule["annotations"].values()
            ), rule["alert"]


def github_anchor(heading: str) -> str:
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_rule_links_the_runbook_entry_that_names_it() -> None:
    text = OPERATIONS.read_text()
    headings = {
        github_anchor(line): line for line in text.splitlines() if re.match(r"#{1,6} ", line)
    }
    for rule in shipped_rules():
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/operations.md" and anchor in headings, rule["annotations"]
        entries = re.findall(
            r"^- \*\*([^*]+?)\.?\*\*", markdown_section(text, headings[anchor]), flags=re.MULTILINE
        )
        named = {name.strip() for entry in entries for name in entry.split(" / ")}
        assert rule["alert"] in named, f"{rule['alert']}: no entry under {headings[anchor]!r}"


@pytest.mark.parametrize("alert", documented_alerts(), ids=lambda alert: alert.name)
def test_alert_expression_parses_and_names_only_exported_metrics(alert: Alert) -> None:
    assert metric_names_in(alert.expr)
    assert not unknown_metrics([alert.expr]), alert.expr
    assert not label_problems(alert.expr)


def test_prometheus_loads_the_rules_file_the_compose_file_mounts() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target, *options = volume.split(":")
        mounts[target] = (source, options)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    for target in config["rule_files"]:
        source, options = mounts[target]
        assert (ROOT / source).resolve() == RULES_FILE and options == ["ro"]


# ---- The checks themselves refuse what they must ------------------------------------------------
@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(durapay_charges_total[5m])",  # unclosed parenthesis
        "rate(durapay_charges_total)",  # rate() of an instant vector
        "quantile_of(0.9, durapay_charges_total)",  # no such function
        '{outcome="failed"}',  # no metric named
    ],
)
def test_metric_check_refuses_a_malformed_expression(expr: str) -> None:
    with pytest.raises(ValueError):
        metric_names_in(expr)


def test_metric_check_refuses_a_metric_nobody_exports() -> None:
    assert unknown_metrics(
        [
            "sum(rate(durapay_charge_total[5m]))",
            "temporal_activity_schedule_to_start_latency_seconds_bucket",
            "durapay_event_loop_lag_seconds_bucket",
        ]
    ) == {"durapay_charge_total", "temporal_activity_schedule_to_start_latency_seconds_bucket"}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('durapay_charges_total{outcome="faild"}', "outcome='faild'"),
        ('durapay_webhook_attempts_total{result=~"network_error|timeouts"}', "result=~"),
        ('durapay_charges_total{kind="charge"}', "has no label 'kind'"),
        ('up{job="durapay-workers"}', "job='durapay-workers'"),
        ('temporal_num_pollers{task_queue="payments"}', "task_queue='payments'"),
    ],
)
def test_label_check_refuses_a_label_or_value_no_series_has(expr: str, problem: str) -> None:
    assert any(problem in found for found in label_problems(expr)), label_problems(expr)


def test_label_check_accepts_what_the_series_carry() -> None:
    assert not label_problems(
        'sum(rate(durapay_http_requests_total{route="/payment-intents/{id}",status=~"5.."}[5m]))'
        ' / on() durapay_reconciliation_discrepancies_open{kind!="stuck_unsettled"}'
        ' + durapay_http_request_duration_seconds_bucket{le="0.5"}'
        ' + up{job=~"durapay-api|durapay-worker"}'
    )


def test_metric_check_knows_the_scrape_time_gauges_and_the_sdks_metrics() -> None:
    known = known_metric_names()
    assert {
        "durapay_event_stream_lag_bytes",
        "durapay_schedule_paused",
        "durapay_manual_reviews_open",
        "durapay_http_requests_total",
        "durapay_http_request_duration_seconds_bucket",
        "temporal_worker_task_slots_used",
        "temporal_workflow_task_execution_failed",
        "temporal_activity_schedule_to_start_latency_bucket",
        "process_cpu_seconds_total",
        "up",
    } <= known
