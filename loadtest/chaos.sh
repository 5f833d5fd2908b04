#!/usr/bin/env bash
# Chaos suite: faults injected into flash sales and a checkout on a private stack (its own Redis,
# RabbitMQ and database; the machine's shared ones are never touched), then the invariants:
# orders <= units, every 202 exactly one order, no buyer over the limit, per SKU available +
# reserved + sold = received and none negative, sold = paid quantity, no order both paid and
# cancelled, every outbox row sent, dead-letter queues empty; and the time to recover.
# The scenarios and the clients are in loadtest/chaos.py. Writes results/chaos-<timestamp>.md
# with one chart per scenario (PNG, matplotlib from loadtest/requirements.txt).
#
#   loadtest/chaos.sh                  # every scenario, release build (about 10 minutes)
#   loadtest/chaos.sh --short          # one fault per flow, as CI runs it
#   CHAOS_SCENARIOS=flash-kill-redis-lose-data loadtest/chaos.sh
#   CHAOS_PROFILE=debug CHAOS_RESULTS=/tmp/chaos loadtest/chaos.sh --short   # what `mall test` runs
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
PROFILE=${CHAOS_PROFILE:-release}
BASE=${CHAOS_BASE_PORT:-18100}

ensure_ports_free $BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 13)) $((BASE + 4)) $((BASE + 14)) \
  $((BASE + 72)) $((BASE + 73)) $((BASE + 79))
"$ROOT/deploy/local/mall" deps
ensure_report_tools

say "building the $PROFILE binaries"
case $PROFILE in
  release) (cd "$ROOT" && cargo build --release --locked --bins) ;;
  debug) (cd "$ROOT" && cargo build --locked --bins) ;;
  *) echo "CHAOS_PROFILE must be release or debug" >&2; exit 2 ;;
esac

echo "process logs: $RUN"
ROOT=$ROOT RUN=$RUN BIN=$TARGET/$PROFILE RESULTS=${CHAOS_RESULTS:-$RESULTS} CHAOS_BASE_PORT=$BASE \
  "$PY" "$ROOT/loadtest/chaos.py" "$@"
