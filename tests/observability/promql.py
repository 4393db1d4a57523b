"""The metric names a PromQL expression reads, and the names the daemon exports, for the checks of
monitoring/ (the alert rules and the Grafana dashboard).

The exported set is taken from the daemon itself: a ``NodeDaemon`` is built (nothing is started) and its
registry's metric families are expanded into the sample names Prometheus stores (a counter ``x`` is scraped
as ``x_total``, a histogram as ``x_bucket``/``x_sum``/``x_count``), so a metric added to the code is known
here without a list to keep up to date.

Complicating factors:
- No PromQL parser is at hand in Python; the expression is reduced instead: strings, label matchers,
  ranges and the label lists of ``by``/``without``/``on``/``ignoring``/``group_*`` are cut out, and what
  remains of the identifiers are function names (followed by ``(``), keywords, or metric names. Its
  syntax is checked separately by promtool (``syntax_errors``).
- Grafana's variables (``$instance``, ``$__rate_interval``) and its ``label_values(metric, label)``
  template query are not PromQL: they are replaced or unwrapped first.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import yaml

# Series Prometheus makes itself for every target: rules may read them, they are not the daemon's.
PROMETHEUS_SERIES = frozenset({"up"})

_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "atan2", "inf", "nan",
})  # fmt: skip
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\(\s*(.*?)\s*(?:,\s*\w+\s*)?\)\s*$", re.S)
_GRAFANA_VARS = (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"))


def grafana_to_promql(expr: str) -> str:
    """A Grafana target or template query as plain PromQL: built-in intervals become durations, other
    variables a label value, and ``label_values(m, label)`` its metric selector."""
    match = _LABEL_VALUES.match(expr)
    if match:
        expr = match.group(1)
    for variable, value in _GRAFANA_VARS:
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (``foo`` in ``rate(foo{a="b"}[5m])``)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.groups()
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    # the name given as a matcher: {__name__="foo"}
    names.update(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def exported_names(tmp_path: Path) -> set[str]:
    """The sample names a node daemon's /metrics carries (its registry, as built by ``NodeDaemon``)."""
    from bgp.daemon import NodeDaemon
    from bgp.node_config import NodeConfig

    daemon = NodeDaemon(
        NodeConfig(
            node="node1", etcd_endpoints=("http://127.0.0.1:9",), run_dir=tmp_path / "run", metrics_port=0
        )
    )
    names = set()
    for family in daemon.registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def syntax_errors(exprs: list[str]) -> str:
    """promtool's complaints about the expressions (each checked as a recording rule); "" if none."""
    rules = [{"record": f"check:expr{i}", "expr": e} for i, e in enumerate(exprs)]
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}, f)
        f.flush()
        proc = subprocess.run(
            ["promtool", "check", "rules", f.name], capture_output=True, text=True, timeout=60, check=False
        )
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr
