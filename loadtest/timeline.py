"""Requests per second and p50/p99 latency over time, as the measured mall processes saw them.

  timeline.py sample OUT URL...     every second (SAMPLE_EVERY seconds), reads each URL's /metrics
                                    and appends one JSON line to OUT (until SIGTERM): answers by
                                    status and the latency histogram, summed over the process's
                                    routes (probes excluded)
  timeline.py chart OUT.png TITLE FILE=LABEL...
                                    one chart: answers per second by status (top), p50 and p99 per
                                    second (bottom), one line per FILE and status

The load generators (oha, wrk, redis-benchmark) print totals only; every mall process exports
`http_server_requests_total` and `http_server_request_duration_seconds`, so sampling those gives
the same time series whichever tool sends the load. Percentiles are interpolated within the
histogram's buckets (0.5 ms .. 10 s, 1-2.5-5 per decade), so they are approximate.
"""

import json
import os
import re
import signal
import sys
import time
import urllib.request

PROBES = {"/metrics", "/readyz", "/healthz"}
LINE = re.compile(r'^(http_server_requests_total|http_server_request_duration_seconds_bucket)\{(.*)\} ([0-9.e+]+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def read(url):
    by_status, buckets = {}, {}
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=2) as res:
        for line in res.read().decode().splitlines():
            m = LINE.match(line)
            if not m:
                continue
            labels = dict(LABEL.findall(m.group(2)))
            if labels.get("route") in PROBES:
                continue
            value = float(m.group(3))
            if m.group(1) == "http_server_requests_total":
                by_status[labels["status"]] = by_status.get(labels["status"], 0) + value
            else:
                buckets[labels["le"]] = buckets.get(labels["le"], 0) + value
    return by_status, buckets


def sample(out, urls):
    every = float(os.environ.get("SAMPLE_EVERY", "1"))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    start = time.monotonic()
    with open(out, "w") as f:
        while not stop:
            t = time.monotonic() - start
            for url in urls:
                try:
                    by_status, buckets = read(url)
                except OSError:
                    continue
                f.write(json.dumps({"t": round(t, 3), "url": url, "status": by_status, "buckets": buckets}) + "\n")
            f.flush()
            time.sleep(max(0.0, every - (time.monotonic() - start - t)))


def quantile(deltas, q):
    """q-quantile in ms from per-bucket count deltas (cumulative by upper bound)."""
    bounds = sorted((float("inf") if le == "+Inf" else float(le), n) for le, n in deltas.items())
    total = bounds[-1][1] if bounds else 0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if upper == float("inf"):
                return lower * 1000
            return (lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)) * 1000
        lower, below = upper, count
    return lower * 1000


def series(path):
    """Per URL and per interval: (t, {status: answers/s}, p50 ms, p99 ms)."""
    rows = {}
    for line in open(path):
        r = json.loads(line)
        rows.setdefault(r["url"], []).append(r)
    out = {}
    for url, samples in rows.items():
        points = []
        for a, b in zip(samples, samples[1:]):
            dt = b["t"] - a["t"]
            if dt <= 0:
                continue
            rates = {s: (b["status"][s] - a["status"].get(s, 0)) / dt for s in b["status"]}
            deltas = {le: b["buckets"][le] - a["buckets"].get(le, 0) for le in b["buckets"]}
            points.append((b["t"], {s: v for s, v in rates.items() if v > 0}, quantile(deltas, 0.5), quantile(deltas, 0.99)))
        out[url] = points
    return out


def chart(out, title, inputs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, height_ratios=[3, 2])
    # One colour per measured input: its statuses in the top panel, its p50 (solid) and p99
    # (dashed) in the bottom one.
    styles = ["-", ":", "-.", (0, (5, 1))]
    for n, spec in enumerate(inputs):
        path, label = spec.split("=", 1)
        runs = series(path)
        for k, (url, points) in enumerate(runs.items()):
            color = f"C{(n + k) % 10}"
            name = label if len(runs) == 1 else f"{label} {url}"
            statuses = sorted({s for (_, rates, _, _) in points for s in rates})
            for j, s in enumerate(statuses):
                top.plot([p[0] for p in points], [p[1].get(s, 0) for p in points], color=color,
                         linestyle=styles[j % len(styles)], marker=".", label=f"{name} {s}")
            bottom.plot([p[0] for p in points], [p[2] for p in points], color=color, label=f"{name} p50")
            bottom.plot([p[0] for p in points], [p[3] for p in points], color=color, linestyle="--", label=f"{name} p99")
    top.set_ylabel("answers per second")
    top.set_ylim(bottom=0)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    top.set_title(title, fontsize=10)
    bottom.set_yscale("log")
    bottom.set_ylabel("server latency ms")
    bottom.set_xlabel("seconds")
    bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 4 and sys.argv[1] == "chart":
        chart(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
