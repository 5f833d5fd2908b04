#!/usr/bin/env bash
# Product benchmark, through mall-gateway in front of two mall-product instances over a seeded
# catalog of 100,000 SKUs, at 50 and 256 connections with oha:
#   fixed    the gateway's fixed-answer reference (`/api/skus/0`: ruled out by the bloom filter)
#   hot      one hot SKU
#   zipf     a Zipf-like mix (s = 1.1) over all 100,000 SKUs
#   unknown  a flood of ids that do not exist
# Reports requests/s, p50/p99, the L1/L2/database shares and database loads per 1,000 requests
# (from the instances' /metrics) in results/product-<timestamp>.md; BENCH_REDIS=cluster runs it on
# a six-node Redis Cluster of its own (see lib.sh) and writes results/product-cluster-*.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GATEWAY_PORT=18080
PRODUCT_PORTS=(18081 18091)
SKUS=${BENCH_SKUS:-100000}
SCHEMA=bench_catalog

ensure_tools oha
ensure_ports_free $GATEWAY_PORT "${PRODUCT_PORTS[@]}"
build_and_deps

say "a fresh catalog of $SKUS SKUs in schema $SCHEMA"
psql "postgres://postgres:postgres@127.0.0.1:5432/mall?sslmode=disable" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
redis-cli --scan --pattern 'benchp:*' | xargs -r redis-cli del >/dev/null
export MALL_DATABASE_SCHEMA=$SCHEMA MALL_REDIS_PREFIX=benchp: MALL_AMQP_PREFIX=benchp.
bench_redis
"$ROOT/target/release/mall-product" seed --skus "$SKUS"

upstreams=""
for port in "${PRODUCT_PORTS[@]}"; do
  start "product-$port" mall-product MALL_HTTP_ADDR=127.0.0.1:$port
  upstreams="${upstreams:+$upstreams,}http://127.0.0.1:$port"
done
start gateway mall-gateway MALL_HTTP_ADDR=127.0.0.1:$GATEWAY_PORT MALL_UPSTREAM_PRODUCT="$upstreams" \
  'MALL_GW_RATE_LIMITS=*:client:100000000/s' MALL_GW_MAX_CONCURRENCY=4096
for port in "${PRODUCT_PORTS[@]}" $GATEWAY_PORT; do wait_ready "http://127.0.0.1:$port/readyz"; done

GW="http://127.0.0.1:$GATEWAY_PORT"
python3 - "$RUN/zipf.txt" "$SKUS" "$GW" <<'PY'
import bisect, random, sys
path, n, gw = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
weights, total = [], 0.0
for rank in range(1, n + 1):
    total += 1.0 / rank ** 1.1
    weights.append(total)
ids = list(range(1, n + 1))
rng.shuffle(ids)  # popularity is not id order
with open(path, "w") as f:
    for _ in range(200_000):
        f.write(f"{gw}/api/skus/{ids[bisect.bisect_left(weights, rng.random() * total)]}\n")
PY

scrape() { # file: the sum over both instances of the cache counters
  for port in "${PRODUCT_PORTS[@]}"; do curl -s "http://127.0.0.1:$port/metrics"; done |
    grep -E "^product_(cache_hits|db_loads|bloom_rejections)_total\{[^}]*scope=\"$SCHEMA\"" >"$1" || true
}

for c in $CONNECTIONS; do
  for scenario in fixed hot zipf unknown; do
    case $scenario in
      fixed) args=("$GW/api/skus/0") ;;
      hot) args=("$GW/api/skus/4242") ;;
      zipf) args=(--urls-from-file "$RUN/zipf.txt") ;;
      unknown) args=(--rand-regex-url "$GW/api/skus/9[0-9]{8}") ;;
    esac
    warmup "$c" "${args[@]}"
    scrape "$RUN/$scenario-$c.before"
    SAMPLE_GROUP="$c connections" SAMPLE_LABEL=$scenario SAMPLE_URLS=$GW measure "$scenario" "$c" "${args[@]}"
    scrape "$RUN/$scenario-$c.after"
  done
done

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
name=product && [ "$REDIS_MODE" = cluster ] && name=product-cluster
report="$RESULTS/$name-$stamp.md"
REDIS_MODE=$REDIS_MODE python3 - "$RUN" "$CONNECTIONS" "$DURATION" "$SKUS" >"$report" <<'PY'
import json, os, re, sys
run, conns, duration, skus = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]
def counters(path):
    out = {}
    for line in open(path):
        m = re.match(r'(\w+)\{([^}]*)\} ([0-9.e+]+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = m.group(1) + ":" + labels.get("layer", labels.get("kind", ""))
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out
def delta(s, c):
    b, a = counters(f"{run}/{s}-{c}.before"), counters(f"{run}/{s}-{c}.after")
    return lambda prefix: sum(v - b.get(k, 0.0) for k, v in a.items() if k.startswith(prefix))
print("# Product benchmark\n")
print(f"Through mall-gateway to two mall-product instances over a seeded catalog of {skus} SKUs; oha,")
print(f"{duration} per measurement after a warm-up; every process and the load generator share this machine.")
print("Shares are of all requests in the measurement (L1: in-process, L2: Redis, db: Postgres loads,")
print("bloom: answered 404 by the filter alone).")
print("Redis: " + ("a six-node Redis Cluster (three masters, a replica each).\n" if os.environ.get("REDIS_MODE") == "cluster" else "one node.\n"))
print("| connections | scenario | requests/s | p50 ms | p99 ms | L1 | L2 | db | bloom | db loads / 1000 req |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = []
for c in conns:
    fixed = None
    for s in ("fixed", "hot", "zipf", "unknown"):
        d = json.load(open(f"{run}/{s}-{c}.json"))
        rps, pct = d["summary"]["requestsPerSec"], d["latencyPercentiles"]
        n = sum(d.get("statusCodeDistribution", {}).values()) or 1
        dl = delta(s, c)
        l1, l2, db, bloom = dl("product_cache_hits_total:l1"), dl("product_cache_hits_total:l2"), dl("product_db_loads_total"), dl("product_bloom_rejections_total")
        print(f"| {c} | {s} | {rps:.0f} | {pct['p50']*1e3:.2f} | {pct['p99']*1e3:.2f} | {l1/n:.1%} | {l2/n:.1%} | {db/n:.2%} | {bloom/n:.1%} | {1000*db/n:.2f} |")
        if s == "fixed":
            fixed = rps
        if s == "hot":
            ratios.append((c, rps / fixed))
        if s == "unknown":
            ratios.append((c, f"unknown ids reaching Postgres: {db/n:.3%}"))
print()
for c, r in ratios:
    print(f"- {c} connections: " + (f"hot SKU / fixed answer throughput = {r:.2f}" if isinstance(r, float) else r))
print("\nTargets: hot SKU >= 0.90 of the fixed answer's throughput; unknown-id flood < 1% to Postgres.")
print("Reproduce: `loadtest/product.sh` (`BENCH_DURATION=30s` for longer runs; `BENCH_REDIS=cluster` on a Redis Cluster).")
PY
charts "$name" "$stamp" >>"$report"
cp "$report" "$RESULTS/$name-latest.md"
cat "$report"
echo
echo "report: $report"
