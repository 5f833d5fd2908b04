#!/usr/bin/env bash
# Flash-crowd benchmark. In one run:
#   1. the crowd: 10,000 distinct users (JWTs from `mall-gateway token --count`, purchase tokens
#      from the token endpoint) buy one unit each of a 1,000-unit item (limit 1) through
#      mall-gateway in front of two flashsale instances, with the `crowd` client (per-status
#      client latencies); then the invariant check: admissions = orders = min(units, buyers
#      admitted), no user above the limit, Redis stock + admitted = quantity, every order an
#      admission in the book (Postgres) and every booked admission an order;
#   2. the ceiling: redis-benchmark running the admission script itself (EVALSHA, the same keys
#      and arguments) against the purchase endpoint of one flashsale instance measured directly
#      with wrk, both at the same concurrency, on the same request (a repeated request id, so
#      every call takes the script's same path). Both load generators are lean C clients: on
#      this 2-core machine the client shares the cores with what it measures, and oha (Rust,
#      tokio) spends about twice wrk's CPU per request, which would be charged to the endpoint;
#   3. the rejected path: wrk on the sold-out item, directly at one flashsale instance (answered
#      from the in-process sold-out flag), against the gateway's own fixed answer (a 404 it
#      gives without an upstream), at the same concurrency.
# The paths compared in 2. and 3. are measured in alternating rounds (BENCH_ROUNDS, default 3):
# on these shared cores the same binary drifts by 10-15% between two back-to-back measurements,
# so each round's pair gives a ratio and the report takes the median of the rounds.
# BENCH_REDIS=cluster runs it all on a six-node Redis Cluster of its own (see lib.sh), where
# every admission also waits for its replica (WAIT; MALL_FLASHSALE_REPLICA_ACKS=0 turns that off,
# to measure what it costs); the ceiling's script then runs on the node owning the item.
# Writes results/flashsale-<timestamp>.md (and flashsale-latest.md); on a cluster
# flashsale-cluster-*.md.
#
#   loadtest/flashsale.sh                       # 10 s per oha/redis-benchmark measurement
#   BENCH_REDIS=cluster loadtest/flashsale.sh
#   BENCH_USERS=20000 BENCH_UNITS=2000 loadtest/flashsale.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GATEWAY_PORT=18080
PRODUCT_PORT=18081
INVENTORY_PORT=18082
ORDER_PORT=18083
FLASH_PORTS=(18084 18094)
USERS=${BENCH_USERS:-10000}
UNITS=${BENCH_UNITS:-1000}
CONC=${BENCH_FLASH_CONNECTIONS:-256}
PREFIX=benchf
PG="postgres://postgres:postgres@127.0.0.1:5432/mall?sslmode=disable"
SECRET=mall-dev-internal-secret-change-me

ensure_tools wrk
command -v redis-benchmark >/dev/null 2>&1 || { echo "redis-benchmark is needed (apt-get install redis-tools)" >&2; exit 1; }
ensure_ports_free $GATEWAY_PORT $PRODUCT_PORT $INVENTORY_PORT $ORDER_PORT "${FLASH_PORTS[@]}"
build_and_deps

fresh_prefix "$PREFIX" ${PREFIX}_product ${PREFIX}_inventory ${PREFIX}_orders ${PREFIX}_flashsale
bench_redis
export MALL_REDIS_PREFIX=$PREFIX: MALL_AMQP_PREFIX=$PREFIX. RUST_LOG=warn

# The catalog inventory asks before stocking SKUs 1 and 2.
MALL_DATABASE_SCHEMA=${PREFIX}_product "$ROOT/target/release/mall-product" seed --skus 2 >/dev/null
start product mall-product MALL_HTTP_ADDR=127.0.0.1:$PRODUCT_PORT MALL_DATABASE_SCHEMA=${PREFIX}_product
start inventory mall-inventory MALL_HTTP_ADDR=127.0.0.1:$INVENTORY_PORT MALL_DATABASE_SCHEMA=${PREFIX}_inventory \
  MALL_PRODUCT_URLS=http://127.0.0.1:$PRODUCT_PORT
start order mall-order MALL_HTTP_ADDR=127.0.0.1:$ORDER_PORT MALL_DATABASE_SCHEMA=${PREFIX}_orders \
  MALL_INVENTORY_URLS=http://127.0.0.1:$INVENTORY_PORT
flash_urls=""
for port in "${FLASH_PORTS[@]}"; do
  start "flashsale-$port" mall-flashsale MALL_HTTP_ADDR=127.0.0.1:$port MALL_DATABASE_SCHEMA=${PREFIX}_flashsale \
    MALL_INVENTORY_URLS=http://127.0.0.1:$INVENTORY_PORT MALL_FLASHSALE_JOB_INTERVAL=200ms
  flash_urls="${flash_urls:+$flash_urls,}http://127.0.0.1:$port"
  # The instance measured directly, whose CPU time is read around its runs.
  if [ "$port" = "${FLASH_PORTS[0]}" ]; then FLASH_PID=${PIDS[-1]}; fi
done
# The gateway's full stack; the rate limits are raised so that they cannot trigger (the
# benchmark measures the path, not the limiter).
start gateway mall-gateway MALL_HTTP_ADDR=127.0.0.1:$GATEWAY_PORT \
  MALL_UPSTREAM_PRODUCT=http://127.0.0.1:$INVENTORY_PORT MALL_UPSTREAM_INVENTORY=http://127.0.0.1:$INVENTORY_PORT \
  MALL_UPSTREAM_ORDER=http://127.0.0.1:$ORDER_PORT MALL_UPSTREAM_FLASHSALE="$flash_urls" \
  'MALL_GW_RATE_LIMITS=*:client:100000000/s,/api/flashsale/purchase:cluster:100000000/s' MALL_GW_MAX_CONCURRENCY=4096
GATEWAY_PID=${PIDS[-1]}
for port in $PRODUCT_PORT $INVENTORY_PORT $ORDER_PORT "${FLASH_PORTS[@]}" $GATEWAY_PORT; do
  wait_ready "http://127.0.0.1:$port/readyz"
done

GW="http://127.0.0.1:$GATEWAY_PORT"
admin=$("$ROOT/target/release/mall-gateway" token --user bench-admin --roles admin --ttl 2h)
say "stocking, and two sessions: the crowd's ($UNITS units, limit 1) and the ceiling's"
for sku_qty in "1 $((UNITS * 2))" "2 2000000"; do
  set -- $sku_qty
  curl -fsS -o /dev/null -X POST "$GW/admin/stock/$1/receive" -H "Authorization: Bearer $admin" \
    -H 'Content-Type: application/json' -d "{\"quantity\":$2}"
done
starts=$(date -u -d '-2 seconds' +%Y-%m-%dT%H:%M:%SZ)
ends=$(date -u -d '+30 minutes' +%Y-%m-%dT%H:%M:%SZ)
create() { # sku quantity limit
  curl -fsS -X POST "$GW/admin/flashsale/sessions" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d "{\"starts_at\":\"$starts\",\"ends_at\":\"$ends\",\"items\":[{\"sku_id\":$1,\"price_cents\":990,\"quantity\":$2,\"per_user_limit\":$3}]}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])'
}
crowd_session=$(create 1 "$UNITS" 1)
ceiling_session=$(create 2 1000000 1000000)
for ((i = 0; i < 100; i++)); do
  curl -fsS "$GW/api/flashsale/sessions" | grep -q "\"session_id\":$ceiling_session" && break
  sleep 0.2
done

say "minting $USERS user tokens (mall-gateway token --count) and their purchase tokens"
"$ROOT/target/release/mall-gateway" token --user crowd- --count "$USERS" --ttl 2h >"$RUN/jwts.txt"
python3 - "$RUN/jwts.txt" "$GW" "$crowd_session" >"$RUN/buyers.txt" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
jwts = [l.strip() for l in open(sys.argv[1]) if l.strip()]
gw, session = sys.argv[2], sys.argv[3]
def token(jwt):
    req = urllib.request.Request(f"{gw}/api/flashsale/sessions/{session}/items/1/token", data=b"", method="POST",
                                 headers={"Authorization": "Bearer " + jwt})
    return jwt + " " + json.load(urllib.request.urlopen(req))["token"]
with ThreadPoolExecutor(32) as pool:
    for line in pool.map(token, jwts):
        print(line)
PY

say "the crowd: $USERS buyers, $CONC connections, through the gateway"
# The crowd is over in seconds: sampled five times a second.
SAMPLE_GROUP="the crowd" SAMPLE_URLS=$GW SAMPLE_EVERY=0.2 sample_start "purchases at the gateway"
"$ROOT/target/release/examples/crowd" --url "$GW/api/flashsale/purchase" --buyers "$RUN/buyers.txt" \
  --session "$crowd_session" --sku 1 --concurrency "$CONC" >"$RUN/crowd.json"
sample_stop

say "waiting for every admission to become an order"
for ((i = 0; i < 240; i++)); do
  orders=$(psql "$PG" -Atc "SELECT count(*) FROM ${PREFIX}_orders.orders WHERE flash_session_id = $crowd_session")
  admitted=$(psql "$PG" -Atc "SELECT count(*) FROM ${PREFIX}_flashsale.admissions WHERE session_id = $crowd_session")
  [ "$orders" = "$admitted" ] && break
  sleep 0.5
done

# The ceiling: the same request through the endpoint and straight to the script.
identity_headers() { # user -> the gateway-signed identity header, as "name: value"
  python3 - "$1" "$SECRET" <<'PY'
import hashlib, hmac, sys, time
user, secret = sys.argv[1], sys.argv[2].encode()
# The gateway's header (mall_common::identity): v1;<sig>;<ts>;<roles>;<user>, the signature an
# HMAC-SHA256 over the value without its signature field.
signed = f"{int(time.time())};buyer;{user}"
sig = hmac.new(secret, f"v1;{signed}".encode(), hashlib.sha256).hexdigest()
print(f"x-mall-identity: v1;{sig};{signed}")
PY
}
rate_jwt=$("$ROOT/target/release/mall-gateway" token --user bench-rate --ttl 2h)
rate_token=$(curl -fsS -X POST "$GW/api/flashsale/sessions/$ceiling_session/items/2/token" -H "Authorization: Bearer $rate_jwt" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
mapfile -t rate_headers < <(identity_headers bench-rate)
curl_headers=()
for h in "${rate_headers[@]}"; do curl_headers+=(-H "$h"); done
json='Content-Type: application/json'
rate_body="{\"session_id\":$ceiling_session,\"sku_id\":2,\"quantity\":1,\"token\":\"$rate_token\",\"request_id\":\"ceiling\"}"
direct="http://127.0.0.1:${FLASH_PORTS[0]}/api/flashsale/purchase"
first=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$direct" "${curl_headers[@]}" -H "$json" -d "$rate_body")
[ "$first" = 202 ] || { echo "the ceiling's first purchase answered $first" >&2; exit 1; }
order_id=$("${RCLI[@]}" HGET "$PREFIX:fs:{fs:$ceiling_session:2}:requests" "10:bench-rate:ceiling" | cut -d: -f3)
k="$PREFIX:fs:{fs:$ceiling_session:2}"
owner=$(owner_port "$k:meta")
sha=$(redis-cli -p "$owner" SCRIPT LOAD "$(cat "$ROOT/lua/flashsale/admit.lua")")
ROUNDS=${BENCH_ROUNDS:-3}
for ((r = 1; r <= ROUNDS; r++)); do
  group="" && [ "$r" = 1 ] && group="the purchase endpoint (admission repeat), one instance"
  SAMPLE_GROUP=$group SAMPLE_LABEL=endpoint SAMPLE_URLS=http://127.0.0.1:${FLASH_PORTS[0]} MEASURE_PIDS=$FLASH_PID \
    measure_wrk "endpoint-$r" "$CONC" POST "$direct" "$rate_body" "${rate_headers[@]}" "$json"
  say "redis-benchmark: the admission script, $CONC connections (round $r)"
  redis-benchmark -p "$owner" -c "$CONC" -n "${BENCH_REDIS_REQUESTS:-300000}" --csv \
    EVALSHA "$sha" 4 "$k:meta" "$k:stock" "$k:users" "$k:requests" \
    bench-rate ceiling 1 "$(date +%s%3N)" "$order_id" >"$RUN/redis-benchmark-$r.csv"
done

# The rejected path: the crowd's item is sold out.
# wrk counts answers only as 2xx or not, so each path's answer is checked once first.
mapfile -t late_headers < <(identity_headers crowd-1)
late_curl=()
for h in "${late_headers[@]}"; do late_curl+=(-H "$h"); done
# A fresh purchase token: the crowd's were minted minutes ago and live MALL_FLASHSALE_TOKEN_TTL
# (5 min); an expired one is refused (403) before the sold-out flag is renewed, which wrk would
# count with the 409s.
late_token=$(curl -fsS -X POST "$GW/api/flashsale/sessions/$crowd_session/items/1/token" \
  -H "Authorization: Bearer $(sed -n 1p "$RUN/buyers.txt" | cut -d' ' -f1)" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
late_body="{\"session_id\":$crowd_session,\"sku_id\":1,\"quantity\":1,\"token\":\"$late_token\",\"request_id\":\"late\"}"
late=$(curl -sS -X POST "$direct" "${late_curl[@]}" -H "$json" -d "$late_body")
case $late in *'"code":"sold_out"'*) ;; *) echo "the late buyer was answered $late, not sold_out" >&2; exit 1 ;; esac
nowhere=$(curl -sS -o /dev/null -w '%{http_code}' "$GW/nowhere")
[ "$nowhere" = 404 ] || { echo "the gateway's fixed answer was $nowhere, not 404" >&2; exit 1; }
purchase_answers() { # status count, one line each, of the measured instance's purchase route
  curl -fsS "http://127.0.0.1:${FLASH_PORTS[0]}/metrics" |
    sed -n 's|^http_server_requests_total{.*route="/api/flashsale/purchase",status="\([0-9]*\)"} \([0-9]*\)$|\1 \2|p'
}
for ((r = 1; r <= ROUNDS; r++)); do
  # wrk tells only 2xx from the rest: the instance's own counters say which answers it gave.
  purchase_answers >"$RUN/soldout-$r.before"
  group="" && [ "$r" = 1 ] && group="sold out vs the gateway's own 404"
  SAMPLE_GROUP=$group SAMPLE_LABEL="sold out, one instance" SAMPLE_URLS=http://127.0.0.1:${FLASH_PORTS[0]} \
    MEASURE_PIDS=$FLASH_PID measure_wrk "soldout-$r" "$CONC" POST "$direct" "$late_body" "${late_headers[@]}" "$json"
  purchase_answers >"$RUN/soldout-$r.after"
  SAMPLE_GROUP=$group SAMPLE_LABEL="gateway 404" SAMPLE_URLS=$GW MEASURE_PIDS=$GATEWAY_PID \
    measure_wrk "gwfixed-$r" "$CONC" GET "$GW/nowhere" ""
done

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
name=flashsale && [ "$REDIS_MODE" = cluster ] && name=flashsale-cluster
report="$RESULTS/$name-$stamp.md"
status=0
REDIS_MODE=$REDIS_MODE RCLI="${RCLI[*]}" python3 - "$RUN" "$PG" "$PREFIX" "$crowd_session" "$UNITS" "$USERS" "$CONC" "$DURATION" "$ROUNDS" >"$report" <<'PY' || status=$?
import csv, json, os, statistics, subprocess, sys
run, pg, prefix, session, units, users, conc, duration, rounds = sys.argv[1:10]
rounds = range(1, int(rounds) + 1)
units, users = int(units), int(users)
def sql(q):
    return subprocess.run(["psql", pg, "-Atc", q], capture_output=True, text=True, check=True).stdout.strip()
def redis(*args):
    return subprocess.run([*os.environ["RCLI"].split(), *args], capture_output=True, text=True, check=True).stdout.strip()
crowd = json.load(open(f"{run}/crowd.json"))
by = crowd["by_status"]
admitted_client = set(crowd["order_ids"])
k = f"{prefix}:fs:{{fs:{session}:1}}"
book = [l.split("|") for l in sql(f"SELECT order_id::text, (extract(epoch FROM admitted_at) * 1000)::bigint FROM {prefix}_flashsale.admissions WHERE session_id = {session}").split("\n") if l]
stream = len(book)
left = int(redis("GET", f"{k}:stock") or 0)
per_user = [int(v) for v in redis("HVALS", f"{k}:users").split()] if redis("HLEN", f"{k}:users") != "0" else []
orders = set(sql(f"SELECT id::text FROM {prefix}_orders.orders WHERE flash_session_id = {session}").split())
over_limit_orders = sql(f"SELECT count(*) FROM (SELECT user_id FROM {prefix}_orders.orders WHERE flash_session_id = {session} GROUP BY user_id HAVING count(*) > 1) x")
recorded = set(order for order, _ in book)
admitted_ms = [int(ms) for _, ms in book]
span = (max(admitted_ms) - min(admitted_ms)) / 1000 if len(admitted_ms) > 1 else 0
n202 = by.get("202", {}).get("count", 0)
checks = {
    f"admissions = min(units, buyers) = {min(units, users)}": stream == min(units, users) and n202 == stream,
    "orders = admissions (every admission one order, every order an admission)": orders == recorded == admitted_client,
    "no user above the limit (Redis and orders)": all(v <= 1 for v in per_user) and over_limit_orders == "0",
    "Redis stock + admitted = quantity": left + stream == units,
    "no transport errors": crowd["errors"] == 0,
}
def wrk(name, expected):
    d = json.load(open(f"{run}/{name}-{conc}.json"))
    # Every answer is the expected status (checked once before the run) when the 2xx/non-2xx
    # split says so; anything else is shown as it is.
    ok = d["requests"] - d["non2xx"] if expected < 300 else d["non2xx"]
    answers = {str(expected): ok}
    if d["requests"] - ok:
        answers["other"] = d["requests"] - ok
    if d["socket_errors"]:
        answers["socket errors"] = d["socket_errors"]
    return d["requests"] / d["seconds"], d["p50_ms"], d["p99_ms"], answers, d["requests"] == ok and not d["socket_errors"], cpu_us(name, d["requests"])
def cpu_us(name, requests):
    """The measured server's CPU time (user + system, all threads) per request, in microseconds."""
    try:
        spent = int(open(f"{run}/{name}-{conc}.cpu").read())
    except (OSError, ValueError):
        return None
    return spent / requests if requests else None
def rb(r):
    row = list(csv.reader(open(f"{run}/redis-benchmark-{r}.csv")))[1]
    return float(row[1]), (float(row[4]) if len(row) > 6 else 0), (float(row[6]) if len(row) > 6 else 0), "", True, None
ep = {r: wrk(f"endpoint-{r}", 202) for r in rounds}
rbs = {r: rb(r) for r in rounds}
so = {r: wrk(f"soldout-{r}", 409) for r in rounds}
def answered(r, when):
    return {code: int(n) for code, n in (l.split() for l in open(f"{run}/soldout-{r}.{when}") if l.strip())}
for r in rounds:
    # Every answer of the instance during the round (warm-up included) was a 409.
    before, after = answered(r, "before"), answered(r, "after")
    grown = {c: after[c] - before.get(c, 0) for c in after if after[c] != before.get(c, 0)}
    if set(grown) != {"409"} or grown["409"] < so[r][3].get("409", 0):
        so[r] = (*so[r][:3], {**so[r][3], "instance counted": grown}, False, so[r][5])
gf = {r: wrk(f"gwfixed-{r}", 404) for r in rounds}
ep_ok = all(v[4] for v in ep.values())
so_ok = all(v[4] for v in so.values())
gf_ok = all(v[4] for v in gf.values())
checks["every measured answer was the expected one (202, 409, 404)"] = ep_ok and so_ok and gf_ok
print("# Flash-sale benchmark\n")
print(f"Two flashsale instances behind mall-gateway, one order, one inventory; every process and the load")
print(f"generators share this 2-core machine. Concurrency {conc}; wrk (2 threads) for {duration} and redis-benchmark for a fixed count, the")
print(f"compared paths alternating over {len(rounds)} rounds (the ratios are the median of the rounds' ratios).\n")
if os.environ.get("REDIS_MODE") == "cluster":
    acks = os.environ.get("MALL_FLASHSALE_REPLICA_ACKS", "1 (the default on a cluster)")
    print(f"Redis: a six-node Redis Cluster (three masters, a replica each); replicas waited for per admission: {acks}.\n")
else:
    print("Redis: one node.\n")
print(f"## The crowd: {users} distinct buyers, {units} units, limit 1, through the gateway\n")
print("| answers | count | p50 ms | p99 ms |\n|---|---:|---:|---:|")
for code, v in sorted(by.items()):
    print(f"| {code} | {v['count']} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |")
print(f"\nAll {users} purchases answered in {crowd['seconds']:.2f} s ({users / crowd['seconds']:.0f} req/s); the {stream} admissions")
print(f"were booked in Postgres within {span:.2f} s ({stream / span if span else 0:.0f} admissions/s).\n")
print("| invariant | holds |\n|---|---|")
for name, ok in checks.items():
    print(f"| {name} | {'yes' if ok else '**NO**'} |")
print(f"\n## The ceiling: the admission script in redis-benchmark vs the purchase endpoint measured directly\n")
print("The same request both ways (a repeated request id: the script's repeat path).\n")
def us(v):
    return f"{v:.1f}" if v is not None else ""
def table(label_a, a, label_b, b, ratio_name):
    """One row per round and path, the round's ratio (a/b req/s), and their median."""
    print(f"| round | path | req/s | p50 ms | p99 ms | server CPU us/req | answers | {ratio_name} |\n|---:|---|---:|---:|---:|---:|---|---:|")
    ratios, p99s = [], []
    for r in rounds:
        ratio = a[r][0] / b[r][0]
        ratios.append(ratio)
        p99s.append(b[r][2] / a[r][2] if a[r][2] else 0)
        print(f"| {r} | {label_a} | {a[r][0]:.0f} | {a[r][1]:.2f} | {a[r][2]:.2f} | {us(a[r][5])} | {a[r][3]} | {ratio:.2f} |")
        print(f"| {r} | {label_b} | {b[r][0]:.0f} | {b[r][1]:.2f} | {b[r][2]:.2f} | {us(b[r][5])} | {b[r][3]} | |")
    return statistics.median(ratios), statistics.median(p99s), ratios
ratio, _, ratios = table("POST /api/flashsale/purchase, one instance", ep, "redis-benchmark EVALSHA admit.lua", rbs, "endpoint / script")
print(f"\nEndpoint / script, median of {len(ratios)} rounds: **{ratio:.2f}** (rounds: {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.50).\n")
print("## The rejected path: sold out, answered from memory, vs the gateway's own fixed answer\n")
so_ratio, so_p99, so_ratios = table("POST /api/flashsale/purchase (sold out), one instance", so, "GET /nowhere at mall-gateway (its own 404)", gf, "sold out / gateway")
print(f"\nSold out / gateway fixed, median of {len(so_ratios)} rounds: throughput **{so_ratio:.2f}** (rounds: {', '.join(f'{x:.2f}' for x in so_ratios)}), p99 {so_p99:.2f} (gateway p99 / sold-out p99; target >= 1.0).")
so_cpu = [so[r][5] / gf[r][5] for r in rounds if so[r][5] and gf[r][5]]
if so_cpu:
    print(f"Server CPU per answer, sold out / gateway 404: median {statistics.median(so_cpu):.2f} (rounds: {', '.join(f'{x:.2f}' for x in so_cpu)}; below 1 means the sold-out answer costs its server less).")
print("Server CPU is the measured process's user + system time (all its threads, from `/proc/<pid>/stat`) during the run, divided by the requests answered.\n")
ok = all(checks.values())
how = "BENCH_REDIS=cluster " if os.environ.get("REDIS_MODE") == "cluster" else ""
if "MALL_FLASHSALE_REPLICA_ACKS" in os.environ:
    how += f"MALL_FLASHSALE_REPLICA_ACKS={os.environ['MALL_FLASHSALE_REPLICA_ACKS']} "
print(f"Invariants: {'PASS' if ok else 'FAIL'}. Reproduce: `{how}loadtest/flashsale.sh`.")
sys.exit(0 if ok else 1)
PY
charts "$name" "$stamp" >>"$report"
cp "$report" "$RESULTS/$name-latest.md"
cat "$report"
echo
echo "report: $report"
exit $status
