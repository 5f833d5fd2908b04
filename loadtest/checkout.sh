#!/usr/bin/env bash
# Checkout benchmark: many users placing orders for many SKUs through mall-gateway (two order
# and two inventory instances, one product), with wrk; then 20% of the orders are paid through
# signed callbacks, and an invariant check runs once the events have flowed:
#   - per SKU, available + reserved + sold = received (and nothing negative);
#   - every order's reservation matches its status (pending: reserved, paid: confirmed,
#     cancelled: released) and every reserved unit belongs to an order;
#   - the outbox is empty and no message is left unacknowledged.
# Writes results/checkout-<timestamp>.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GATEWAY_PORT=18080
PRODUCT_PORT=18081
INVENTORY_PORTS=(18082 18092)
ORDER_PORTS=(18083 18093)
SKUS=${BENCH_SKUS:-1000}
USERS=${BENCH_USERS:-200}
CONNS=${BENCH_CHECKOUT_CONNECTIONS:-50}
PREFIX=benchc
PG="postgres://postgres:postgres@127.0.0.1:5432/mall?sslmode=disable"

ensure_tools wrk
ensure_ports_free $GATEWAY_PORT $PRODUCT_PORT "${INVENTORY_PORTS[@]}" "${ORDER_PORTS[@]}"
build_and_deps

fresh_prefix "$PREFIX" ${PREFIX}_product ${PREFIX}_inventory ${PREFIX}_orders
export MALL_REDIS_PREFIX=$PREFIX: MALL_AMQP_PREFIX=$PREFIX.
MALL_DATABASE_SCHEMA=${PREFIX}_product "$ROOT/target/release/mall-product" seed --skus "$SKUS"

start product mall-product MALL_HTTP_ADDR=127.0.0.1:$PRODUCT_PORT MALL_DATABASE_SCHEMA=${PREFIX}_product
inventory_urls="" order_urls=""
for port in "${INVENTORY_PORTS[@]}"; do
  start "inventory-$port" mall-inventory MALL_HTTP_ADDR=127.0.0.1:$port MALL_DATABASE_SCHEMA=${PREFIX}_inventory \
    MALL_PRODUCT_URLS=http://127.0.0.1:$PRODUCT_PORT
  inventory_urls="${inventory_urls:+$inventory_urls,}http://127.0.0.1:$port"
done
wait_ready "http://127.0.0.1:${INVENTORY_PORTS[0]}/readyz"
for port in "${ORDER_PORTS[@]}"; do
  start "order-$port" mall-order MALL_HTTP_ADDR=127.0.0.1:$port MALL_DATABASE_SCHEMA=${PREFIX}_orders \
    MALL_PRODUCT_URLS=http://127.0.0.1:$PRODUCT_PORT MALL_INVENTORY_URLS="$inventory_urls"
  order_urls="${order_urls:+$order_urls,}http://127.0.0.1:$port"
done
start gateway mall-gateway MALL_HTTP_ADDR=127.0.0.1:$GATEWAY_PORT \
  MALL_UPSTREAM_PRODUCT=http://127.0.0.1:$PRODUCT_PORT MALL_UPSTREAM_INVENTORY="$inventory_urls" \
  MALL_UPSTREAM_ORDER="$order_urls" MALL_UPSTREAM_FLASHSALE=http://127.0.0.1:$PRODUCT_PORT \
  'MALL_GW_RATE_LIMITS=*:client:100000000/s' MALL_GW_MAX_CONCURRENCY=4096
for port in $PRODUCT_PORT "${INVENTORY_PORTS[@]}" "${ORDER_PORTS[@]}" $GATEWAY_PORT; do
  wait_ready "http://127.0.0.1:$port/readyz"
done

say "stocking $SKUS SKUs and minting $USERS tokens"
admin=$("$ROOT/target/release/mall-gateway" token --user bench-admin --roles admin --ttl 2h)
for ((sku = 1; sku <= SKUS; sku++)); do
  printf 'POST /admin/stock/%d/receive {"quantity":100000}\n' "$sku"
done | python3 -c "
import json, sys, urllib.request
for line in sys.stdin:
    _, path, body = line.split(' ', 2)
    req = urllib.request.Request('http://127.0.0.1:$GATEWAY_PORT' + path, data=body.strip().encode(), method='POST',
        headers={'Authorization': 'Bearer $admin', 'Content-Type': 'application/json'})
    assert urllib.request.urlopen(req).status == 200
"
for ((u = 1; u <= USERS; u++)); do
  "$ROOT/target/release/mall-gateway" token --user "buyer-$u" --ttl 2h
done >"$RUN/tokens.txt"

say "checkout load: $CONNS connections, $DURATION"
SAMPLE_GROUP="checkout, $CONNS connections" SAMPLE_URLS=http://127.0.0.1:$GATEWAY_PORT sample_start "POST /api/orders at the gateway"
TOKENS="$RUN/tokens.txt" SKUS=$SKUS wrk -t 2 -c "$CONNS" -d "$DURATION" --latency \
  -s "$ROOT/loadtest/checkout.lua" "http://127.0.0.1:$GATEWAY_PORT" | tee "$RUN/wrk.txt"
sample_stop

say "paying 20% of the orders through signed callbacks"
psql "$PG" -Atc "SELECT id, total_cents FROM ${PREFIX}_orders.orders WHERE status = 'pending_payment' ORDER BY random() LIMIT (SELECT count(*) / 5 FROM ${PREFIX}_orders.orders)" >"$RUN/to-pay.txt"
python3 - "$RUN/to-pay.txt" "http://127.0.0.1:$GATEWAY_PORT" <<'PY'
import hashlib, hmac, json, sys, urllib.request
secret = b"mall-dev-payment-secret-change-me"
for line in open(sys.argv[1]):
    order, total = line.strip().split("|")
    body = json.dumps({"payment_id": "bench-" + order, "order_id": order, "amount_cents": int(total), "status": "succeeded"}).encode()
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(sys.argv[2] + "/api/payments/callback", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "X-Signature": sig})
    assert json.load(urllib.request.urlopen(req))["outcome"] == "applied"
PY

say "waiting for the outbox to drain and the consumers to settle"
for ((i = 0; i < 120; i++)); do
  unsent=$(psql "$PG" -Atc "SELECT count(*) FROM ${PREFIX}_orders.outbox WHERE sent_at IS NULL")
  unacked=$(rabbitmqctl -q list_queues name messages_unacknowledged messages_ready 2>/dev/null |
    awk -v p="$PREFIX." 'index($1, p) == 1 && $1 !~ /hold|dlq/ { s += $2 + $3 } END { print s + 0 }')
  [ "$unsent" = 0 ] && [ "$unacked" = 0 ] && break
  sleep 0.5
done

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
report="$RESULTS/checkout-$stamp.md"
status=0
python3 - "$RUN" "$PG" "$PREFIX" "$unsent" "$unacked" "$CONNS" "$DURATION" "$SKUS" "$USERS" >"$report" <<'PY' || status=$?
import re, subprocess, sys
run, pg, prefix, unsent, unacked, conns, duration, skus, users = sys.argv[1:10]
def sql(q):
    return subprocess.run(["psql", pg, "-Atc", q], capture_output=True, text=True, check=True).stdout.strip()
wrk = open(f"{run}/wrk.txt").read()
m = dict(re.findall(r"(\w+)=([0-9.]+)", wrk.split("RESULT", 1)[1]))
requests, secs = int(m["requests"]), int(m["duration_us"]) / 1e6
placed = int(sql(f"SELECT count(*) FROM {prefix}_orders.orders"))
checks = {
    "per SKU available + reserved + sold = received, none negative": sql(
        f"SELECT count(*) FROM {prefix}_inventory.stock WHERE available + reserved + sold <> received OR least(available, reserved, sold) < 0") == "0",
    "every order's reservation matches its status": sql(
        f"""SELECT count(*) FROM {prefix}_orders.orders o LEFT JOIN {prefix}_inventory.reservations r ON r.id = o.reservation_id
             WHERE r.id IS NULL OR (o.status, r.status) NOT IN (('pending_payment', 'reserved'), ('paid', 'confirmed'), ('cancelled', 'released'))""") == "0",
    "every reserved or sold unit belongs to an order": sql(
        f"""SELECT count(*) FROM {prefix}_inventory.reservations r LEFT JOIN {prefix}_orders.orders o ON o.reservation_id = r.id
             WHERE o.id IS NULL AND r.status <> 'released'""") == "0",
    "units held = units ordered (pending + paid)": sql(
        f"SELECT (SELECT COALESCE(sum(reserved + sold), 0) FROM {prefix}_inventory.stock) = (SELECT COALESCE(sum(i.quantity), 0) FROM {prefix}_orders.order_items i JOIN {prefix}_orders.orders o ON o.id = i.order_id WHERE o.status <> 'cancelled')") == "t",
    "outbox drained": unsent == "0",
    "no message left unacknowledged or waiting (hold queues aside)": unacked == "0",
}
paid = sql(f"SELECT count(*) FROM {prefix}_orders.orders WHERE status = 'paid'")
print("# Checkout benchmark\n")
print(f"Through mall-gateway to two order and two inventory instances and one product instance; {users} users")
print(f"with gateway-minted tokens, {skus} SKUs, one random SKU per order, wrk with {conns} connections for {duration}")
print("(2 threads); every process and the load generator share this machine. Afterwards 20% of the")
print("orders were paid through signed callbacks and the events left to settle.\n")
print("| orders placed | orders/s | p50 ms | p99 ms | p99.9 ms | non-2xx | socket errors | orders paid |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {placed} | {placed / secs:.0f} | {float(m['p50_ms']):.2f} | {float(m['p99_ms']):.2f} | {float(m['p999_ms']):.2f} | {m['non2xx']} | {m['errors']} | {paid} |")
print("\n| invariant | holds |\n|---|---|")
for name, ok in checks.items():
    print(f"| {name} | {'yes' if ok else '**NO**'} |")
print(f"\nOverall: {'PASS' if all(checks.values()) else 'FAIL'}. Reproduce: `loadtest/checkout.sh`.")
sys.exit(0 if all(checks.values()) else 1)
PY
charts checkout "$stamp" >>"$report"
cp "$report" "$RESULTS/checkout-latest.md"
cat "$report"
echo
echo "report: $report"
exit $status
