"""Against a running local stack: every metric an alert or a dashboard panel reads is exported
by some process, and Prometheus (started by `mall up --observability`) scrapes every process
and has loaded the alert rules.

Usage: metrics.py PROMETHEUS_URL NAME=METRICS_URL...
Called by tests/contract/run on its stack, after the fuzzing has sent traffic everywhere.
"""

import json
import sys
import time
import urllib.parse
import urllib.request

import promql


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def exported(text):
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def eventually(what, probe, seconds=90):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        ok, last = probe()
        if ok:
            return last
        time.sleep(1)
    sys.exit(f"FAIL {what} within {seconds}s; last: {last}")


def main():
    prometheus, processes = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
    names = set()
    for name, url in processes.items():
        names |= exported(get(url))
    used = promql.all_metric_names()
    missing = {m: where for m, where in used.items() if m not in names}
    for metric, where in sorted(missing.items()):
        print(f"FAIL {metric} is used by {', '.join(sorted(set(where)))} but no process exports it")
    if missing:
        sys.exit(1)
    print(f"all {len(used)} metrics that alerts and dashboards read are exported")

    def targets():
        active = json.loads(get(f"{prometheus}/api/v1/targets?state=active"))["data"]["activeTargets"]
        up = {t["labels"]["instance"] for t in active if t["health"] == "up"}
        want = {urllib.parse.urlsplit(u).netloc for u in processes.values()}
        return want <= up, f"up: {sorted(up)}, wanted: {sorted(want)}"

    eventually("Prometheus scraping every process", targets)

    def rules():
        groups = json.loads(get(f"{prometheus}/api/v1/rules?type=alert"))["data"]["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        wanted = {a.split(" ", 1)[1] for a, _ in promql.alert_exprs()}
        return loaded == wanted, f"loaded {sorted(loaded)}"

    eventually("Prometheus loading every alert rule", rules)

    def queried():
        q = urllib.parse.quote("count(amqp_dead_letter_messages)")
        result = json.loads(get(f"{prometheus}/api/v1/query?query={q}"))["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) > 0, result

    eventually("Prometheus answering a query on a scraped metric", queried)
    print(f"Prometheus scrapes all {len(processes)} processes and has loaded every alert rule")


if __name__ == "__main__":
    main()
