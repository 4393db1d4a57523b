"""monitoring/grafana-dashboard.json: every PromQL expression in it parses and names only metrics the
daemon exports (taken from the daemon's registry, so renamed or removed metrics fail here), and it shows
what the issue asks for: sessions, prefixes, kernel routes, latency, restarts and warnings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from observability.promql import (
    PROMETHEUS_SERIES,
    exported_names,
    grafana_to_promql,
    metric_names,
    syntax_errors,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
# Series of Prometheus itself the dashboard may read: the alerts of monitoring/prometheus-rules.yml.
DASHBOARD_EXTRA = PROMETHEUS_SERIES | {"ALERTS"}


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def expressions(dashboard: dict) -> dict[str, str]:
    """where -> PromQL (Grafana's variables replaced), for every query of the dashboard."""
    found = {}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = grafana_to_promql(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = grafana_to_promql(variable["query"])
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found[f"annotation {annotation['name']}"] = grafana_to_promql(annotation["expr"])
    return found


@pytest.fixture(scope="module")
def exprs() -> dict[str, str]:
    return expressions(json.loads(DASHBOARD.read_text()))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('calico_bgp_session_up{instance=~"x", peer!="by"} == 0', {"calico_bgp_session_up"}),
        ("sum by (instance, le) (rate(a_bucket[5m]))", {"a_bucket"}),
        ("histogram_quantile(0.99, sum without (peer) (rate(b_bucket[1m] offset 5m)))", {"b_bucket"}),
        ("a and on (instance) group_left (peer) b or c unless ignoring (x) d", {"a", "b", "c", "d"}),
        ("count(x == 0) or vector(0) > bool 1e3", {"x"}),
        ('{__name__="named"}', {"named"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("max_over_time(g[1h:5m]) > 0", {"g"}),
    ],
)
def test_metric_names_are_read_out_of_promql(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("grafana", "promql"),
    [
        ("label_values(calico_bgp_build_info, instance)", "calico_bgp_build_info"),
        ('label_values(m{job="j"}, peer)', 'm{job="j"}'),
        ('rate(c{instance=~"$instance"}[$__rate_interval])', 'rate(c{instance=~"x"}[5m])'),
        ('c{node="${node}"}', 'c{node="x"}'),
    ],
)
def test_grafana_queries_become_promql(grafana, promql):
    assert grafana_to_promql(grafana) == promql


def test_the_dashboard_names_only_exported_metrics(exprs, tmp_path):
    exported = exported_names(tmp_path) | DASHBOARD_EXTRA
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in exprs.items()}
    assert not {where: names for where, names in unknown.items() if names}, unknown


def test_a_metric_the_daemon_does_not_export_is_caught(tmp_path):
    assert "calico_bgp_session_state" not in exported_names(tmp_path)
    assert "calico_bgp_session_up" in exported_names(tmp_path)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool: Debian's prometheus package")
def test_every_dashboard_expression_parses(exprs):
    assert syntax_errors(list(exprs.values())) == ""
    assert syntax_errors(["sum(rate(x[5m])"]) != ""  # the check itself can fail


@pytest.mark.parametrize(
    "metric",
    [
        "calico_bgp_session_up",  # sessions per node and their state over time
        "calico_bgp_prefixes_received",
        "calico_bgp_prefixes_announced",
        "calico_bgp_kernel_routes_installed",
        "calico_bgp_propagation_export_seconds_bucket",
        "calico_bgp_propagation_import_seconds_bucket",
        "calico_bgp_exabgp_restarts_total",
        "calico_bgp_config_warnings",
    ],
)
def test_the_dashboard_shows(exprs, metric):
    assert any(metric in metric_names(expr) for expr in exprs.values()), metric


def test_panels_have_unique_ids_and_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
