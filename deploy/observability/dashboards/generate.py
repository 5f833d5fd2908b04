#!/usr/bin/env python3
"""Writes mall's Grafana dashboards (the *.json beside this file).

Edit the panels here and run it again: `python3 deploy/observability/dashboards/generate.py`.
tests/deploy/run fails when a committed dashboard differs from what this writes.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(title, queries, unit="short", kind="timeseries", width=12, description="", stack=False, max_=None):
    """A panel: queries are (expr, legend) pairs."""
    defaults = {"unit": unit}
    if max_ is not None:
        defaults["max"] = max_
    if kind == "timeseries":
        defaults["custom"] = {"stacking": {"mode": "normal" if stack else "none"}, "fillOpacity": 10}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}}
        if kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(queries)],
        "_width": width,
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_width": 24}


def dashboard(uid, title, description, panels, variables=()):
    # Left to right, wrapping at Grafana's 24 columns; a row header starts a new line.
    x = y = line_height = 0
    laid = []
    for i, p in enumerate(panels, start=1):
        w = p.pop("_width")
        h = {"row": 1, "stat": 4}.get(p["type"], 8)
        if x + w > 24 or p["type"] == "row":
            x, y, line_height = 0, y + line_height, 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        laid.append(p)
        x, line_height = x + w, max(line_height, h)
    templating = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        }
    ]
    for name, expr in variables:
        templating.append(
            {
                "name": name,
                "type": "query",
                "datasource": DS,
                "query": {"query": expr, "refId": name},
                "definition": expr,
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"text": "All", "value": "$__all"},
                "refresh": 2,
                "hide": 0,
            }
        )
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mall"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": templating},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["mall"], "title": "mall", "asDropdown": True}],
        "panels": laid,
    }


def red():
    sel = 'job=~"$job"'
    per_route = "sum by (job, route) (rate(http_server_requests_total{%s}[%s]))" % (sel, RATE)
    errors = 'sum by (job, route) (rate(http_server_requests_total{%s, status=~"5.."}[%s]))' % (sel, RATE)
    latency = "histogram_quantile(%s, sum by (job, route, le) (rate(http_server_request_duration_seconds_bucket{%s}[%s])))"
    up_rate = "sum by (pool) (rate(gateway_upstream_requests_total[%s]))" % RATE
    up_err = 'sum by (pool) (rate(gateway_upstream_requests_total{status=~"5..|error"}[%s]))' % RATE
    up_lat = "histogram_quantile(%s, sum by (pool, le) (rate(gateway_upstream_duration_seconds_bucket[%s])))"
    return dashboard(
        "mall-red",
        "mall: requests, errors, duration",
        "RED per route (every service, selected by job) and per upstream pool (the gateway's view).",
        [
            row("Per route"),
            panel("Requests per second", [(per_route, "{{job}} {{route}}")], "reqps"),
            panel(
                "5xx ratio",
                [(f"{errors} / {per_route}", "{{job}} {{route}}")],
                "percentunit",
                description="Alert MallHighErrorRatio fires over 1% for 5 minutes.",
            ),
            panel("p99 duration", [(latency % ("0.99", sel, RATE), "{{job}} {{route}}")], "s",
                  description="Alert MallSlowRoute fires over 500 ms for 10 minutes."),
            panel("p50 duration", [(latency % ("0.5", sel, RATE), "{{job}} {{route}}")], "s"),
            panel(
                "Answers by status",
                [("sum by (job, status) (rate(http_server_requests_total{%s}[%s]))" % (sel, RATE), "{{job}} {{status}}")],
                "reqps",
                width=24,
                stack=True,
            ),
            row("Per upstream pool (gateway)"),
            panel("Upstream requests per second", [(up_rate, "{{pool}}")], "reqps", width=8),
            panel("Upstream errors (5xx, connection)", [(f"{up_err} / {up_rate}", "{{pool}}")], "percentunit", width=8),
            panel("Upstream p99", [(up_lat % ("0.99", RATE), "{{pool}}")], "s", width=8),
            panel(
                "Instances in rotation",
                [("sum by (pool) (gateway_upstream_in_rotation)", "{{pool}}")],
                width=8,
                description="Alert MallInstanceOutOfRotation fires when one is out for 2 minutes.",
            ),
            panel(
                "Breaker state (0 closed, 1 half-open, 2 open)",
                [("max by (pool) (gateway_circuit_state)", "{{pool}}")],
                width=8,
                max_=2,
            ),
            panel(
                "Retries, shed load, spent retry budget",
                [
                    ("sum by (pool) (rate(gateway_retries_total[%s]))" % RATE, "retries {{pool}}"),
                    ("sum by (pool) (rate(gateway_shed_total[%s]))" % RATE, "shed {{pool}}"),
                    ("sum by (pool) (rate(gateway_retry_budget_exhausted_total[%s]))" % RATE, "budget spent {{pool}}"),
                ],
                "reqps",
                width=8,
            ),
            panel(
                "Rate limited (429) by limit",
                [("sum by (scope) (rate(gateway_rate_limited_total[%s]))" % RATE, "{{scope}}")],
                "reqps",
                width=24,
            ),
        ],
        variables=[("job", "label_values(http_server_requests_total, job)")],
    )


def flashsale():
    return dashboard(
        "mall-flashsale",
        "mall: flash sale",
        "Units left, admissions, sold-out answers, the hand-off to order and what it produced.",
        [
            panel("Units left (running sessions)", [("max(flashsale_remaining_units)", "units")], kind="stat", width=6),
            panel("Admissions / s", [("sum(rate(flashsale_admissions_total[%s]))" % RATE, "admitted")], "reqps", kind="stat", width=6),
            panel("Hand-off lag", [("max(flashsale_handoff_oldest_age_seconds)", "oldest")], "s", kind="stat", width=6),
            panel(
                "Redis breaker",
                [("max(flashsale_redis_breaker_open)", "open")],
                kind="stat",
                width=6,
                description="1 while the flash sale refuses purchases because Redis keeps failing.",
            ),
            panel("Units left", [("max(flashsale_remaining_units)", "units")]),
            panel(
                "Purchases",
                [
                    ("sum(rate(flashsale_admissions_total[%s]))" % RATE, "admitted (202)"),
                    ("sum(rate(flashsale_sold_out_answers_total[%s]))" % RATE, "sold out (memory flag)"),
                    ("sum by (reason) (rate(flashsale_rejections_total[%s]))" % RATE, "refused: {{reason}}"),
                ],
                "reqps",
            ),
            panel(
                "Hand-off backlog and lag",
                [
                    ("max(flashsale_handoff_backlog)", "admissions waiting"),
                    ("max(flashsale_handoff_oldest_age_seconds)", "oldest waiting (s)"),
                    (
                        "sum by (waiting_for) (increase(flashsale_settlements_deferred_total[%s]))" % RATE,
                        "settlement put off ({{waiting_for}})",
                    ),
                ],
                description="Admissions booked in Postgres whose event RabbitMQ has not confirmed yet; "
                "an ended session's settlement waits for them, then for their orders.",
            ),
            panel(
                "Hand-off and orders",
                [
                    ('sum(rate(outbox_sent_total{job="flashsale"}[%s]))' % RATE, "handed off"),
                    ("sum(increase(flashsale_reloads_total[%s]))" % RATE, "items reloaded into Redis"),
                    ("sum(rate(flash_orders_created_total[%s]))" % RATE, "orders created"),
                    ("sum(increase(flash_orders_failed_total[%s]))" % RATE, "admissions without order"),
                    ("sum(increase(inventory_oversell_refused_total[%s]))" % RATE, "oversell refused by inventory"),
                ],
                description="The last two must stay at 0 (alerts MallAdmissionWithoutOrder, MallOversellRefused).",
            ),
        ],
    )


def cache():
    hits = "sum by (layer) (rate(product_cache_hits_total[%s]))" % RATE
    loads = "sum(rate(product_db_loads_total[%s]))" % RATE
    total = f"(sum(rate(product_cache_hits_total[{RATE}])) + {loads})"
    return dashboard(
        "mall-cache",
        "mall: product cache",
        "Where product reads are answered (L1 memory, L2 Redis, the database), what the bloom filters turn away, and how often loads queue for the rebuild lock.",
        [
            panel(
                "Share of reads by layer",
                [(f"{hits} / scalar{total}", "{{layer}}"), (f"{loads} / {total}", "database")],
                "percentunit",
                stack=True,
                max_=1,
            ),
            panel("Reads per second by layer", [(hits, "{{layer}}"), (loads, "database")], "reqps"),
            panel(
                "Bloom filter rejections (unknown ids)",
                [("sum by (kind) (rate(product_bloom_rejections_total[%s]))" % RATE, "{{kind}}")],
                "reqps",
                description="404s answered without Redis or the database: a cache-penetration attack shows here.",
            ),
            panel(
                "Rebuild lock",
                [
                    ("sum(rate(product_lock_waits_total[%s]))" % RATE, "waits"),
                    ("sum(rate(product_lock_wait_timeouts_total[%s]))" % RATE, "wait timeouts"),
                    ("sum(rate(product_stale_served_total[%s]))" % RATE, "stale served"),
                ],
                "reqps",
            ),
            panel(
                "Database loads by kind",
                [("sum by (kind) (rate(product_db_loads_total[%s]))" % RATE, "{{kind}}")],
                "reqps",
            ),
            panel(
                "Redis fallbacks and peak database concurrency",
                [
                    ("sum(rate(product_redis_fallbacks_total[%s]))" % RATE, "Redis failed, read through"),
                    ("max(product_db_inflight_peak)", "peak loads in flight"),
                ],
            ),
        ],
    )


def orders():
    return dashboard(
        "mall-orders",
        "mall: orders",
        "Orders placed, paid and cancelled, the outbox and the dead-letter queues.",
        [
            panel(
                "Orders",
                [
                    ("sum(rate(orders_placed_total[%s]))" % RATE, "placed"),
                    ("sum(rate(flash_orders_created_total[%s]))" % RATE, "placed (flash sale)"),
                    ('sum(rate(payments_total{outcome="applied"}[%s]))' % RATE, "paid"),
                    ("sum by (reason) (rate(orders_cancelled_total[%s]))" % RATE, "cancelled: {{reason}}"),
                ],
                "reqps",
            ),
            panel(
                "Payment callbacks by outcome",
                [("sum by (outcome) (rate(payments_total[%s]))" % RATE, "{{outcome}}")],
                "reqps",
            ),
            panel(
                "Outbox: oldest unsent event",
                [("max by (job, schema) (outbox_oldest_unsent_seconds)", "{{job}} {{schema}}")],
                "s",
                description="Alert MallOutboxStuck fires over 60 s.",
            ),
            panel(
                "Dead-letter queues",
                [("max by (queue) (amqp_dead_letter_messages)", "{{queue}}")],
                description="Alert MallDeadLetters fires on any message.",
            ),
            panel(
                "Inventory reservations",
                [
                    ("sum by (outcome) (rate(inventory_reservations_total[%s]))" % RATE, "{{outcome}}"),
                    ("sum(rate(inventory_reservations_expired_total[%s]))" % RATE, "expired, released"),
                ],
                "reqps",
            ),
            panel(
                "Messages redelivered and dead-lettered",
                [
                    ("sum by (queue) (rate(amqp_redeliveries_total[%s]))" % RATE, "redelivered {{queue}}"),
                    ("sum by (queue) (rate(amqp_dead_lettered_total[%s]))" % RATE, "dead-lettered {{queue}}"),
                ],
                "reqps",
            ),
        ],
    )


def main():
    for board in (red(), flashsale(), cache(), orders()):
        path = HERE / f"{board['uid']}.json"
        path.write_text(json.dumps(board, indent=2, sort_keys=False) + "\n")
        print(path.relative_to(HERE.parent.parent.parent))


if __name__ == "__main__":
    main()
