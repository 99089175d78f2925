"""deploy/grafana/durapay.json: a dashboard Grafana imports as it is, whose every query parses and
names only metrics we export (the checks of tests/unit/test_alerts.py), and which shows every
metric family of Durapay's own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_alerts import (
    durapay_families,
    label_problems,
    metric_names_in,
    unknown_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = ROOT / "deploy" / "grafana" / "durapay.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's own variables a query may use, each with a value Prometheus would be sent.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h"}
GRID_COLUMNS = 24


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def all_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def graph_panels() -> list[dict[str, Any]]:
    return [panel for panel in all_panels() if panel["type"] != "row"]


def as_sent(expr: str) -> str:
    """The query as Prometheus gets it: Grafana's variables replaced. Any other `$` is a
    variable the dashboard does not define."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"undefined variable in {expr!r}"
    return expr


def queries() -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in graph_panels()
        for target in panel["targets"]
    ]


@pytest.mark.parametrize(("query", "expr"), queries(), ids=[name for name, _ in queries()])
def test_dashboard_query_parses_and_names_only_exported_metrics(query: str, expr: str) -> None:
    assert metric_names_in(as_sent(expr)), query
    assert not unknown_metrics([as_sent(expr)]), query
    assert not label_problems(as_sent(expr)), query


def test_dashboard_shows_every_durapay_metric_family() -> None:
    shown = {name for _, expr in queries() for name in metric_names_in(as_sent(expr))}
    families = {
        family: samples
        for family, samples in durapay_families().items()
        if family.startswith("durapay_")
    }
    missing = sorted(family for family, samples in families.items() if not samples & shown)
    assert not missing, f"no panel shows {missing}"


def test_dashboard_imports_with_any_prometheus_data_source() -> None:
    board = dashboard()
    assert board["uid"] == "durapay" and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in graph_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"])
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
    ids = [panel["id"] for panel in all_panels()]
    assert len(set(ids)) == len(ids)


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for column in range(grid["x"], grid["x"] + grid["w"]):
            for line in range(grid["y"], grid["y"] + grid["h"]):
                assert (column, line) not in taken, (panel["title"], taken.get((column, line)))
                taken[(column, line)] = panel["title"]


def test_dashboard_check_refuses_a_grafana_variable_it_does_not_know() -> None:
    with pytest.raises(AssertionError, match="undefined variable"):
        as_sent('sum(rate(durapay_charges_total{instance=~"$instance"}[5m]))')
    assert re.search(r"\[1m\]", as_sent("rate(durapay_charges_total[$__rate_interval])"))
