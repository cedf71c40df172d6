"""The Grafana dashboard's PromQL, as Prometheus would receive it: (panel title, expr) for every target.

Grafana replaces its own variables before it sends a query; `dashboard_queries` does the same with fixed
values (`$__rate_interval` -> 1m, `$__range` -> 1h), so the expressions can be sent to a live Prometheus
or parsed by promtool. A plain module (no test in it): the dashboard's unit test and live tests import it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "gateway.json"

SUBSTITUTIONS = {"rate_interval": "1m", "range": "1h"}
# `$__range` and `${__range}`, but not a longer variable such as `$__range_s` or `$__rate_interval_ms`.
GRAFANA_VARIABLE = re.compile(r"\$(?:__(rate_interval|range)(?![A-Za-z0-9_])|\{__(rate_interval|range)\})")


def load(path: Path | str = DASHBOARD) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included; the panels inside a collapsed row come right after it."""
    result = []
    for panel in dashboard["panels"]:
        result.append(panel)
        result.extend(panel.get("panels", []))
    return result


def substitute(expr: str) -> str:
    return GRAFANA_VARIABLE.sub(lambda m: SUBSTITUTIONS[m.group(1) or m.group(2)], expr)


def dashboard_queries(path: Path | str = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, Grafana's variables replaced."""
    return [
        (panel["title"], substitute(target["expr"]))
        for panel in panels(load(path))
        for target in panel.get("targets", [])
    ]
