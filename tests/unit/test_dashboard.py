"""The Grafana dashboard (grafana/dashboards/gateway.json), read as a file: its structure, its layout, and its
PromQL, checked against the metrics the gateway and nginx-prometheus-exporter really export.

Whether the queries return data is for a test against a live Prometheus; that test takes its queries from
`tests.dashboard_queries`, like this one.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboard_queries import DASHBOARD, dashboard_queries, load, panels, substitute

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
ROWS = ["Traffic", "Latency", "Errors", "Upstream LLM & files", "Replicas & fleet", "Responses API", "nginx"]

# Metric families as the code declares them (prometheus-client adds the suffixes in the exposition).
COUNTERS = {
    "gateway_responses_resumed",
    "gateway_worker_cpu_seconds",
    "gateway_streamed_bytes",
    "gateway_streamed_tokens",
    "gateway_requests",
    "gateway_llm_requests",
    "gateway_tutorials_written",
    "gateway_tutorial_bytes",
    "gateway_client_disconnects",
    "gateway_heartbeats",
    "gateway_rejected_requests",
    "gateway_files_removed",
    "gateway_files_removed_bytes",
    "gateway_storage_failures",
    "gateway_global_limit_fallbacks",
}
GAUGES = {
    "gateway_responses_background",
    "gateway_responses_attached",
    "gateway_active_generations",
    "gateway_max_generations",
    "gateway_asyncio_tasks",
    "gateway_files_free_bytes",
    "gateway_files_min_free_bytes",
    "gateway_files_kept",
    "gateway_files_kept_bytes",
    "gateway_retention_last_sweep_timestamp_seconds",
    "gateway_global_limit",
    "gateway_global_limit_up",
}
HISTOGRAMS = {
    "gateway_generation_duration_seconds",
    "gateway_time_to_first_token_seconds",
    "gateway_llm_request_duration_seconds",
}
# nginx-prometheus-exporter: its counters carry no `_total`, except the requests counter.
NGINX_COUNTERS = {"nginx_connections_accepted", "nginx_connections_handled", "nginx_http_requests_total"}
NGINX_GAUGES = {
    "nginx_connections_active",
    "nginx_connections_reading",
    "nginx_connections_writing",
    "nginx_connections_waiting",
    "nginx_up",
}

# Names as they appear in the exposition, so as Prometheus stores them.
RATE_SERIES = (
    {f"{name}_total" for name in COUNTERS}
    | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    | NGINX_COUNTERS
)
GAUGE_SERIES = GAUGES | NGINX_GAUGES
KNOWN_SERIES = RATE_SERIES | GAUGE_SERIES

METRIC = re.compile(r"(?<![A-Za-z0-9_:])(?:gateway|nginx)_[a-z_]+")
RANGE_SELECTOR = re.compile(r"\[([^\]]*)\]")
# rate(x[w]) / increase(x[w]) with a plain selector: the function, the metric, the window.
RANGE_FUNCTION = re.compile(
    r"\b(rate|irate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{[^}]*\})?\s*\[([^\]]*)\]"
)
QUANTILE = re.compile(r"histogram_quantile\(\s*([0-9.]+)\s*,")


def metrics_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def unknown_metrics(expr: str) -> set[str]:
    return metrics_in(expr) - KNOWN_SERIES


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load(DASHBOARD)


@pytest.fixture(scope="module")
def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return panels(dashboard)


@pytest.fixture(scope="module")
def graphs(all_panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The panels that query something: every panel but the rows."""
    return [p for p in all_panels if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def all_exprs(graphs: list[dict[str, Any]]) -> list[str]:
    return [e for p in graphs for e in exprs(p)]


# --- the dashboard --------------------------------------------------------------------------------------


def test_identity_and_settings(dashboard: dict[str, Any]) -> None:
    assert (dashboard["uid"], dashboard["title"]) == ("metagpt-gateway", "MetaGPT Agent Gateway")
    assert dashboard["schemaVersion"] == 39
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}


def test_rows_group_the_panels_in_order(all_panels: list[dict[str, Any]]) -> None:
    assert [p["title"] for p in all_panels if p["type"] == "row"] == ROWS
    assert all_panels[0]["type"] == "row", "the first panel must be a row, so every panel is in one"


def test_panel_ids_are_unique(all_panels: list[dict[str, Any]]) -> None:
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_the_provisioned_prometheus(all_panels: list[dict[str, Any]]) -> None:
    # Rows included: tests/integration/test_deploy_files.py reads `datasource` and `targets` of every panel.
    for panel in all_panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource", DATASOURCE) == DATASOURCE, (panel["title"], target["refId"])


def test_every_panel_has_a_unit_and_complete_targets(graphs: list[dict[str, Any]]) -> None:
    for panel in graphs:
        title = panel["title"]
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert isinstance(unit, str) and unit, f"{title}: no unit"
        assert panel["targets"], f"{title}: no targets"
        for target in panel["targets"]:
            for key in ("refId", "expr", "legendFormat"):
                assert isinstance(target.get(key), str) and target[key].strip(), f"{title}: no {key}"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: duplicate refId in {ref_ids}"


def test_ratio_panels_are_percentunit(graphs: list[dict[str, Any]]) -> None:
    for panel in graphs:
        if re.search(r"\bratio\b", panel["title"].lower()):  # a word: "generations" holds "ratio"
            assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit", panel["title"]


# --- layout ---------------------------------------------------------------------------------------------


def test_panels_fit_the_24_column_grid(all_panels: list[dict[str, Any]]) -> None:
    heights = {"row": 1, "stat": 4, "timeseries": 8}
    for panel in all_panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] > 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']}: {pos} is wider than the grid"
        assert pos["h"] == heights[panel["type"]], f"{panel['title']}: {pos}"
        if panel["type"] == "row":
            assert (pos["x"], pos["w"]) == (0, 24), panel["title"]


def overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_overlap_helper() -> None:
    a = {"x": 0, "y": 0, "w": 12, "h": 8}
    assert overlap(a, {"x": 6, "y": 4, "w": 12, "h": 8})
    assert not overlap(a, {"x": 12, "y": 0, "w": 12, "h": 8})  # side by side
    assert not overlap(a, {"x": 0, "y": 8, "w": 24, "h": 1})  # right below


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    # The top level only: a collapsed row's panels are laid out when it opens.
    for a, b in itertools.combinations(dashboard["panels"], 2):
        assert not overlap(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def section(dashboard: dict[str, Any], panel: dict[str, Any]) -> str:
    """Title of the row a (top-level) panel sits under."""
    rows = [
        p for p in dashboard["panels"] if p["type"] == "row" and p["gridPos"]["y"] < panel["gridPos"]["y"]
    ]
    return max(rows, key=lambda r: r["gridPos"]["y"])["title"]


def test_panels_sit_under_their_row(dashboard: dict[str, Any], graphs: list[dict[str, Any]]) -> None:
    for panel in graphs:
        names = {m for e in exprs(panel) for m in metrics_in(e)}
        where = section(dashboard, panel)
        if any(n.startswith("nginx_") for n in names):
            assert where == "nginx", panel["title"]
        if any(n.startswith(("gateway_llm_", "gateway_tutorial")) for n in names):
            assert where == "Upstream LLM & files", panel["title"]
        if any("quantile" in e for e in exprs(panel)) and not any("llm" in n for n in names):
            assert where == "Latency", panel["title"]


# --- PromQL ---------------------------------------------------------------------------------------------


def test_metric_name_check_catches_typos() -> None:
    assert unknown_metrics("sum(rate(gateway_requests_total[1m]))") == set()
    assert unknown_metrics("sum(gateway_active_generation)") == {"gateway_active_generation"}
    assert unknown_metrics("rate(gateway_requests[1m])") == {"gateway_requests"}  # the `_total` is missing
    assert unknown_metrics("rate(nginx_connections_accepted_total[1m])") == {
        "nginx_connections_accepted_total"
    }


def test_every_metric_is_one_that_is_exported(graphs: list[dict[str, Any]]) -> None:
    for panel in graphs:
        for expr in exprs(panel):
            assert metrics_in(expr), f"{panel['title']}: no metric in {expr!r}"
            assert not unknown_metrics(expr), f"{panel['title']}: unknown {unknown_metrics(expr)} in {expr!r}"


def test_every_exported_metric_is_on_the_dashboard(graphs: list[dict[str, Any]]) -> None:
    used = {m for e in all_exprs(graphs) for m in metrics_in(e)}
    families = COUNTERS | GAUGES | HISTOGRAMS | NGINX_COUNTERS | NGINX_GAUGES
    missing = {f for f in families if not any(u == f or u.startswith(f"{f}_") for u in used)}
    assert not missing


def test_rates_are_of_counters_over_grafanas_windows(graphs: list[dict[str, Any]]) -> None:
    for panel in graphs:
        for expr in exprs(panel):
            windows = RANGE_SELECTOR.findall(expr)
            calls = RANGE_FUNCTION.findall(expr)
            assert len(calls) == len(windows), f"{panel['title']}: a range selector outside rate/increase"
            for function, metric, window in calls:
                assert metric in RATE_SERIES, f"{panel['title']}: {function}() of {metric}, not a counter"
                expected = "$__range" if function == "increase" else "$__rate_interval"
                assert window == expected, f"{panel['title']}: {function}({metric}[{window}])"
            for metric in metrics_in(expr) & GAUGE_SERIES:
                assert not re.search(rf"{metric}\s*(\{{[^}}]*\}})?\s*\[", expr), (
                    f"{panel['title']}: rate of a gauge"
                )


def test_quantiles_aggregate_buckets_by_le(graphs: list[dict[str, Any]]) -> None:
    for panel in graphs:
        for expr in exprs(panel):
            if "histogram_quantile" in expr:
                assert re.search(
                    r"sum by \(le\b[^)]*\) \(rate\([a-z_]+_bucket\[\$__rate_interval\]\)\)", expr
                ), expr
                assert panel["fieldConfig"]["defaults"]["unit"] == "s", panel["title"]


AGGREGATION = re.compile(r"(?:sum|max|min|count)\b")
# What may come before a query's outer aggregation: a quantile of it, a time since it, a parenthesis.
AROUND_AGGREGATION = re.compile(r"^(?:histogram_quantile\([0-9.]+, |time\(\) - |\()*")


def test_every_query_aggregates_workers_and_replicas(graphs: list[dict[str, Any]]) -> None:
    # Each worker of each replica exports its own series (one per `instance`): a panel draws the
    # whole server unless it says it is per replica, and then it groups by `instance` alone.
    for panel in graphs:
        for expr in exprs(panel):
            assert AGGREGATION.match(AROUND_AGGREGATION.sub("", expr)), f"{panel['title']}: {expr}"
            if "instance" in expr:
                assert "replica" in panel["title"].lower(), panel["title"]
                assert expr.startswith("sum by (instance) ("), expr


def test_no_fabricated_data(graphs: list[dict[str, Any]]) -> None:
    # `or vector(0)` would draw a flat 0 for a metric that does not exist (a typo, a dead scrape).
    for expr in all_exprs(graphs):
        assert "vector(" not in expr, expr
        assert "absent(" not in expr, expr


def test_ratios_survive_a_zero_denominator(graphs: list[dict[str, Any]]) -> None:
    for panel in graphs:
        if panel["fieldConfig"]["defaults"]["unit"] != "percentunit":
            continue
        for expr in exprs(panel):
            assert " / " in expr, expr
            denominator = expr.rsplit(" / ", 1)[1]
            assert denominator.startswith("clamp_min(") or "> 0" in denominator, expr


def test_brackets_and_quotes_balance(graphs: list[dict[str, Any]]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    for expr in all_exprs(graphs):
        stack: list[str] = []
        for char in re.sub(r'"[^"]*"', '""', expr):
            if char in "([{":
                stack.append(char)
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], expr
        assert not stack, expr
        assert expr.count('"') % 2 == 0, expr


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    """The real PromQL parser, through recording rules: promtool parses each rule's expression."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install_os_deps.sh installs it)")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- required panels ------------------------------------------------------------------------------------

# (topic, panel type or None for any, words that must all be in the title (lower case), text in an expr)
REQUIRED = [
    (
        "active generations graph with capacity",
        "timeseries",
        ("active generations",),
        "sum(gateway_max_generations)",
    ),
    ("active generations stat", "stat", ("active generations",), "gateway_active_generations"),
    ("streamed bytes/s", "timeseries", ("streamed bytes",), "rate(gateway_streamed_bytes_total"),
    ("tokens/s by kind", "timeseries", ("tokens", "kind"), "by (kind)"),
    ("requests/s by status", "timeseries", ("requests", "status"), "by (status)"),
    ("time to first token", "timeseries", ("first token",), "gateway_time_to_first_token_seconds_bucket"),
    ("generation duration by outcome", "timeseries", ("generation duration", "outcome"), "le, outcome"),
    ("generations/s by outcome", "timeseries", ("generations/s", "outcome"), "by (outcome)"),
    ("error ratio", None, ("error ratio",), 'outcome="failed"'),
    ("cancellation ratio", None, ("cancellation ratio",), 'outcome="cancelled"'),
    ("rejections/s by reason", "timeseries", ("rejections", "reason"), "by (reason)"),
    ("client disconnects/s", "timeseries", ("disconnects",), "gateway_client_disconnects_total"),
    ("heartbeats/s", "timeseries", ("heartbeats",), "gateway_heartbeats_total"),
    ("upstream LLM latency", "timeseries", ("llm latency",), "gateway_llm_request_duration_seconds_bucket"),
    ("LLM requests/s by outcome", "timeseries", ("llm requests", "outcome"), "by (outcome)"),
    (
        "tutorials written stat",
        "stat",
        ("tutorials written",),
        "increase(gateway_tutorials_written_total[$__range])",
    ),
    ("tutorials written/s", "timeseries", ("tutorials written",), "rate(gateway_tutorials_written_total"),
    ("tutorial bytes", None, ("tutorial bytes",), "gateway_tutorial_bytes_total"),
    ("replicas stat", "stat", ("replicas",), "count(gateway_max_generations)"),
    ("generations by replica", "timeseries", ("generations", "replica"), "by (instance)"),
    ("tokens/s by replica", "timeseries", ("tokens", "replica"), "by (instance)"),
    ("global limit against running", "timeseries", ("global limit",), "max(gateway_global_limit)"),
    ("global limit's Redis stat", "stat", ("redis",), "min(gateway_global_limit_up)"),
    ("global limit fallbacks", "timeseries", ("fallbacks", "mode"), "by (mode)"),
    ("storage failures", "timeseries", ("storage failures", "reason"), "by (reason)"),
    ("nginx connections", "timeseries", ("nginx connections",), "nginx_connections_waiting"),
    ("nginx requests/s", "timeseries", ("nginx requests",), "rate(nginx_http_requests_total"),
]


@pytest.mark.parametrize(("topic", "kind", "words", "text"), REQUIRED, ids=[r[0] for r in REQUIRED])
def test_required_panel(
    graphs: list[dict[str, Any]], topic: str, kind: str | None, words: tuple[str, ...], text: str
) -> None:
    matches = [
        p
        for p in graphs
        if (kind is None or p["type"] == kind)
        and all(w in p["title"].lower() for w in words)
        and any(text in e for e in exprs(p))
    ]
    assert matches, f"no {kind or 'panel'} titled with {words} querying {text!r}"


def quantiles(panel: dict[str, Any]) -> set[float]:
    return {float(q) for e in exprs(panel) for q in QUANTILE.findall(e)}


def titled(graphs: list[dict[str, Any]], words: str, kind: str = "timeseries") -> dict[str, Any]:
    [panel] = [p for p in graphs if p["type"] == kind and words in p["title"].lower()]
    return panel


def test_latency_panels_show_their_quantiles(graphs: list[dict[str, Any]]) -> None:
    assert quantiles(titled(graphs, "first token")) == {0.5, 0.95, 0.99}
    assert quantiles(titled(graphs, "generation duration")) == {0.5, 0.95}
    assert quantiles(titled(graphs, "llm latency")) == {0.5, 0.95}


def test_active_generations_graph_draws_the_capacity(graphs: list[dict[str, Any]]) -> None:
    panel = titled(graphs, "active generations")
    assert {"sum(gateway_active_generations)", "sum(gateway_max_generations)"} <= set(exprs(panel))


def test_nginx_connections_show_every_state(graphs: list[dict[str, Any]]) -> None:
    panel = titled(graphs, "nginx connections")
    states = {"active", "reading", "writing", "waiting"}
    assert {f"sum(nginx_connections_{s})" for s in states} <= set(exprs(panel))
    assert states <= {t["legendFormat"] for t in panel["targets"]}


# --- the helper for live tests --------------------------------------------------------------------------


def test_substitute_replaces_grafanas_variables_only() -> None:
    assert substitute("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert substitute("increase(x[$__range])") == "increase(x[1h])"
    assert substitute("increase(x[${__range}])") == "increase(x[1h])"
    assert substitute("x * $__range_s") == "x * $__range_s"


def test_dashboard_queries(dashboard: dict[str, Any], graphs: list[dict[str, Any]]) -> None:
    queries = dashboard_queries(DASHBOARD)
    assert dashboard_queries() == queries
    assert len(queries) == sum(len(p["targets"]) for p in graphs)
    assert ("Active generations", "sum(gateway_active_generations)") in queries
    for title, expr in queries:
        assert title and expr
        assert "$" not in expr, (title, expr)
    assert (
        "Requests/s by status",
        "sum by (status) (rate(gateway_requests_total[1m]))",
    ) in queries
    assert ("Tutorials written", "sum(increase(gateway_tutorials_written_total[1h]))") in queries
