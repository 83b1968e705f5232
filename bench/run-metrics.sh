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
# Server pinned to core 0 (--threads 1; its admin thread runs there too, so the scrape's cost
# is in the server CPU figure), load generator and the scraping curl on core 1, production
# heartbeats. Variables: DUR (10), ROUNDS (3), OUT (bench/results/metrics).
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

bench/peers/target/release/floor 1000 300 | tee "$OUT/floor.txt"

python3 - "$OUT" "$ROUNDS" <<'PY'
import glob, json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
floor = float(re.search(r"plain write\s*: ([\d.]+)", open(f"{out}/floor.txt").read()).group(1))
scrapes = [l.split() for f in glob.glob(f"{out}/scrapes-*.log") for l in open(f)]
ok = [s for s in scrapes if s[0] == "200"]
print(f"floor (plain write): {floor:.2f} µs per delivery; scrapes answered 200: {len(ok)} of {len(scrapes)}"
      + (f", {statistics.mean(int(s[1]) for s in ok):,.0f} bytes each" if ok else ""))
rows = {}
for which in ["base", "head", "scraped"]:
    rs = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/fanout-{which}-*.json"))]
    if rs:
        rows[which] = rs
head = statistics.mean(r["server"]["cpu_us_per_delivery"] for r in rows["head"]) if "head" in rows else None
print("| binary | rounds | rate/s | loss | p50 ms | p99 ms | server CPU µs/delivery (each round) | mean | ÷ head | ÷ floor |")
print("|---|---|---|---|---|---|---|---|---|---|")
for which, rs in rows.items():
    cpu = [r["server"]["cpu_us_per_delivery"] for r in rs]
    m = statistics.mean(cpu)
    loss = max(r["loss"] for r in rs)
    p50 = statistics.mean(r["latency_us"]["p50"] for r in rs) / 1000
    p99 = statistics.mean(r["latency_us"]["p99"] for r in rs) / 1000
    rate = statistics.mean(r["rate"] for r in rs)
    vs = f"{m / head:.3f}×" if head else "—"
    print(f"| {which} | {len(rs)} | {rate:,.0f} | {loss * 100:.2f}% | {p50:.2f} | {p99:.2f} | {' / '.join(f'{c:.2f}' for c in cpu)} | {m:.2f} | {vs} | {m / floor:.2f}× |")
PY
