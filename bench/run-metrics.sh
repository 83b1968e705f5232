#!/usr/bin/env bash
# The "Admin endpoint: the cost of counting and of scraping" figures of docs/benchmarks.md:
# fanout 1,000 × 100/s against
#   base     the binary before the counters (BASELINE, optional),
#   head     this checkout's binary with --admin-bind, never scraped,
#   scraped  the same, with GET /metrics every second during the whole run,
# in alternating rounds of the same run, with the kernel floor measured once.
#
#   flock /tmp/shardcast-bench.lock bench/run-metrics.sh          # results in bench/results/metrics/
#   BASELINE=/path/to/old/shardcast flock /tmp/shardcast-bench.lock bench/run-metrics.sh
#
# BASELINE: a release build of the commit before the counters, e.g. (no worktree needed)
#   mkdir /tmp/base && git archive bc2704e | tar -x -C /tmp/base && (cd /tmp/base && cargo build --release -p shardcast)
#
# Server pinned to core 0 (--threads 1; its admin thread runs there too, so the scrape's cost
# is in the server CPU figure), load generator and the scraping curl on core 1, production
# heartbeats. Then the server CPU of one scrape with 1,000 and 10,000 idle connections
# (bench/scrape_cost.py). Variables: DUR (10), ROUNDS (3), SCRAPES (500), OUT
# (bench/results/metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
OUT=${OUT:-bench/results/metrics}
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log
ulimit -n "$(ulimit -Hn)"
cargo build --release -p shardcast -p shardcast-loadtest
(cd bench/peers && cargo build --release --bin floor)
command -v curl >/dev/null || { echo "bench/run-metrics.sh: curl is required" >&2; exit 1; }

WHICH="head scraped"
[ -n "${BASELINE:-}" ] && WHICH="base $WHICH"
port=9600
for round in $(seq "$ROUNDS"); do
  for which in $WHICH; do
    port=$((port + 1))
    admin=$((port + 100))
    bin=target/release/shardcast
    extra=(--admin-bind 127.0.0.1:$admin)
    if [ "$which" = base ]; then bin=$BASELINE; extra=(); fi
    taskset -c 0 "$bin" --bind 127.0.0.1:$port --threads 1 --no-pin --ping-interval 25000 --ping-timeout 20000 "${extra[@]}" \
      > "$OUT/server-$which-$round.log" 2>&1 &
    PID=$!
    wait_listening $port "$which"
    SCRAPER=
    if [ "$which" = scraped ]; then
      # One scrape a second; each answer's size is logged (a failed scrape logs 0).
      (while kill -0 "$PID" 2>/dev/null; do
         taskset -c 1 curl -s -o /dev/null -w '%{http_code} %{size_download}\n' --max-time 2 "http://127.0.0.1:$admin/metrics" || echo "000 0"
         sleep 1
       done) > "$OUT/scrapes-$round.log" 2>/dev/null &
      SCRAPER=$!
    fi
    taskset -c 1 target/release/shardcast-loadtest fanout --subscribers 1000 --rate 100 --duration "$DUR" --ramp-rate 2000 \
      --target 127.0.0.1:$port --server-pid "$PID" --label "$which" --json "$OUT/fanout-$which-$round.json" \
      > "$OUT/fanout-$which-$round.txt" 2>/dev/null || echo "fanout against $which (round $round) failed" >&2
    [ -n "$SCRAPER" ] && { kill "$SCRAPER" 2>/dev/null || true; wait "$SCRAPER" 2>/dev/null || true; }
    stop
  done
done

# What one scrape costs the server, with 1,000 and 10,000 idle Socket.IO connections (a scrape
# walks the worker's tables): SCRAPES back to back, server CPU minus an idle window.
for n in 1000 10000; do
  port=$((port + 1))
  admin=$((port + 100))
  taskset -c 0 target/release/shardcast --bind 127.0.0.1:$port --threads 1 --no-pin --ping-interval 25000 --ping-timeout 20000 \
    --admin-bind 127.0.0.1:$admin > "$OUT/server-scrape-$n.log" 2>&1 &
  PID=$!
  wait_listening $port "scrape-$n"
  taskset -c 1 target/release/shardcast-loadtest conns --connections $n --hold 30 --ramp-rate 5000 --target 127.0.0.1:$port \
    > "$OUT/conns-scrape-$n.txt" 2>/dev/null &
  LOAD=$!
  sleep $((n / 5000 + 3))
  taskset -c 1 python3 bench/scrape_cost.py "$PID" 127.0.0.1:$admin "${SCRAPES:-500}" | sed "s/^/$n connections: /" | tee "$OUT/scrape-cost-$n.txt"
  kill "$LOAD" 2>/dev/null || true; wait "$LOAD" 2>/dev/null || true
  stop
done

bench/peers/target/release/floor 1000 300 | tee "$OUT/floor.txt"

# The table of docs/benchmarks.md ("Admin endpoint"), from bench/results/metrics/.
if [ "$OUT" = bench/results/metrics ]; then python3 bench/render.py metrics; fi
