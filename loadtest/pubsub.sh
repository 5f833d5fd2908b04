#!/usr/bin/env bash
# Cross-instance L1 invalidation on a Redis Cluster: cluster-wide PUBLISH against sharded
# SPUBLISH, on a six-node cluster of its own (three masters, a replica each). For each verb,
# redis-benchmark publishes BENCH_PUBSUB_MESSAGES (200,000) messages of the invalidation's size
# to the channel product uses, from 50 connections to the node owning the channel's slot, while
# one subscriber per master listens (as product instances would, each connected wherever the
# cluster client put it; an SSUBSCRIBE always lands on the owner). Reports publishes/s, the CPU
# all six nodes spent per message, the cluster-bus messages it caused and what each subscriber
# received, in results/pubsub-<timestamp>.md.
#
#   loadtest/pubsub.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MESSAGES=${BENCH_PUBSUB_MESSAGES:-200000}
REDIS_MODE=cluster
command -v redis-benchmark >/dev/null 2>&1 || { echo "redis-benchmark is needed (apt-get install redis-tools)" >&2; exit 1; }
ensure_report_tools
bench_redis
NODES=("${PIDS[@]}")
base=${BENCH_CLUSTER_PORT:-17100}
CHANNEL="mall:product:invalidate"
owner=$(owner_port "$CHANNEL")
masters=$("${RCLI[@]}" cluster nodes | awk '$3 ~ /master/ { split($2, a, "[:@]"); print a[2] }')
bus() { # the cluster-bus publish messages all nodes sent so far
  local port total=0 n
  for port in $(seq "$base" $((base + 5))); do
    n=$(redis-cli -p "$port" cluster info | tr -d '\r' |
      awk -F: '/^cluster_stats_messages_publish(shard)?_sent/ { s += $2 } END { print s + 0 }')
    total=$((total + n))
  done
  echo "$total"
}

for verb in PUBLISH SPUBLISH; do
  sub=SUBSCRIBE && [ "$verb" = SPUBLISH ] && sub=SSUBSCRIBE
  subs=()
  for port in $masters; do
    # redis-cli prints three lines per message; the count is read when it is stopped.
    target=$port && [ "$verb" = SPUBLISH ] && target=$owner
    redis-cli -p "$target" "$sub" "$CHANNEL" >"$RUN/$verb-sub-$port.txt" &
    subs+=($!)
  done
  for ((i = 0; i < 50; i++)); do
    [ "$(redis-cli -p "$owner" pubsub $([ "$verb" = SPUBLISH ] && echo shardnumsub || echo numsub) "$CHANNEL" | tail -n 1)" -ge 1 ] && break
    sleep 0.1
  done
  say "$verb: $MESSAGES messages, 50 connections, to the channel's owner (port $owner)"
  bus_before=$(bus)
  cpu_before=$(cpu_ticks "${NODES[@]}")
  redis-benchmark -p "$owner" -c 50 -n "$MESSAGES" --csv "$verb" "$CHANNEL" \
    "sku:4242 spu:17 categories bloom:sku:4242" >"$RUN/$verb.csv"
  cpu_after=$(cpu_ticks "${NODES[@]}")
  bus_after=$(bus)
  # Let the subscribers drain what is in flight before they are stopped.
  for ((i = 0; i < 50; i++)); do
    got=$(cat "$RUN"/$verb-sub-*.txt | grep -c '^sku:4242' || true)
    [ "$got" -ge "$MESSAGES" ] && break
    sleep 0.1
  done
  kill "${subs[@]}" 2>/dev/null || true
  wait "${subs[@]}" 2>/dev/null || true
  echo "$((bus_after - bus_before)) $(((cpu_after - cpu_before) * 1000000 / $(getconf CLK_TCK)))" >"$RUN/$verb.cost"
done

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
report="$RESULTS/pubsub-$stamp.md"
python3 - "$RUN" "$MESSAGES" <<'PY' >"$report"
import csv, glob, sys
run, messages = sys.argv[1], int(sys.argv[2])
print("# Invalidation broadcast on a Redis Cluster: PUBLISH vs SPUBLISH\n")
print(f"Six nodes (three masters, a replica each) on this 2-core machine; {messages} messages of the")
print("invalidation's shape from redis-benchmark (50 connections) to the node owning the channel's slot;")
print("one subscriber per master (SUBSCRIBE anywhere for PUBLISH, SSUBSCRIBE at the owner for SPUBLISH).\n")
print("| verb | publishes/s | p50 ms | cluster-bus messages | per publish | node CPU us / publish | received by each subscriber |")
print("|---|---:|---:|---:|---:|---:|---|")
for verb in ("PUBLISH", "SPUBLISH"):
    row = list(csv.reader(open(f"{run}/{verb}.csv")))[1]
    rps, p50 = float(row[1]), float(row[4])
    bus, cpu_us = (int(x) for x in open(f"{run}/{verb}.cost").read().split())
    got = [sum(1 for l in open(f) if l.startswith("sku:4242")) for f in sorted(glob.glob(f"{run}/{verb}-sub-*.txt"))]
    print(f"| {verb} | {rps:.0f} | {p50:.3f} | {bus} | {bus / messages:.2f} | {cpu_us / messages:.2f} | {', '.join(map(str, got))} |")
print("\nCluster-bus messages: `cluster_stats_messages_publish_sent` + `..._publishshard_sent` over all nodes.")
print("Node CPU: user + system time of the six redis-server processes during the run, per message.")
print("Reproduce: `loadtest/pubsub.sh`.")
PY
cp "$report" "$RESULTS/pubsub-latest.md"
cat "$report"
echo
echo "report: $report"
