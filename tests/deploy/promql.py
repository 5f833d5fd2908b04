"""The PromQL of mall's alert rules and dashboards, and the metric names it reads."""

import json
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"

# Series Prometheus makes itself rather than scraping them from mall.
SYNTHETIC = {"up"}
# PromQL words that look like metric names.
KEYWORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "bool", "offset", "rate", "irate", "increase",
    "histogram_quantile", "scalar", "vector", "abs", "clamp_min", "clamp_max", "topk", "bottomk",
    "label_values", "inf", "nan",
}


def alert_exprs():
    rules = yaml.safe_load((OBSERVABILITY / "alerts.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def dashboard_exprs():
    for path in sorted((OBSERVABILITY / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", t["expr"]


def as_plain_promql(expr):
    """A dashboard's expression with Grafana's variables filled in, for promtool."""
    return expr.replace("$__rate_interval", "5m").replace("$job", ".*")


def metric_names(expr):
    """Metric names an expression reads (label matchers, groupings and strings left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    names = set()
    for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if token.lower() in KEYWORDS or token in SYNTHETIC or re.fullmatch(r"\d.*|e\d+", token):
            continue
        names.add(token)
    return names


def all_metric_names():
    """{metric name: [where it is used]} over every alert and dashboard panel."""
    used = {}
    for where, expr in [*alert_exprs(), *dashboard_exprs()]:
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    return used
