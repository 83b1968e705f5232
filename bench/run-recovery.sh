#!/usr/bin/env bash
# The "Connection state recovery" figures of docs/benchmarks.md: fanout with recovery off and
# on, same binary, same run (what the per-packet offset and the retention of every packet for
# the window cost).
#
#   flock /tmp/shardcast-bench.lock bench/run-recovery.sh     # results in bench/results/recovery/
#
# Fanout 1,000 × 100/s and 10,000 × 10/s against `shardcast` (this checkout's release build)
# without recovery ("off") and with `--recovery-window 120000` (Node's default window, 2 min:
# every packet of the run stays kept, up to the default caps of 100,000 packets / 64 MiB),
# alternated off/on/off/on so drift on a shared machine shows; the kernel floor once. Server
# pinned to core 0 (--threads 1), load generator to core 1, production heartbeats.
# Variables: DUR (10), OUT (bench/results/recovery), ROUNDS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
OUT=${OUT:-bench/results/recovery}
mkdir -p "$OUT"
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-2}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p shardcast -p shardcast-loadtest
(cd bench/peers && cargo build --release --bin floor)

port=9600
run() { # label scenario-name server-flags... -- loadtest args...
  local label=$1 name=$2
  shift 2
  local flags=()
  while [ "$1" != -- ]; do flags+=("$1"); shift; done
  shift
  port=$((port + 1))
  taskset -c 0 target/release/shardcast --bind 127.0.0.1:$port --threads 1 --no-pin \
    --ping-interval 25000 --ping-timeout 20000 "${flags[@]}" > "$OUT/server-$label.log" 2>&1 &
  PID=$!
  wait_listening $port "$label"
  local f="$OUT/$name-$label"
  taskset -c 1 target/release/shardcast-loadtest fanout "$@" --target 127.0.0.1:$port --server-pid "$PID" \
    --label "$label" --json "$f.json" > "$f.txt" 2>/dev/null || echo "$name $label failed (see $f.txt)" >&2
  stop
}

for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    if [ $mode = on ]; then flags=(--recovery-window 120000); else flags=(); fi
    run "$mode-$round" fanout-1k "${flags[@]}" -- --subscribers 1000 --rate 100 --duration "$DUR" --ramp-rate 2000
    run "$mode-$round" fanout-10k "${flags[@]}" -- --subscribers 10000 --rate 10 --duration "$DUR" --ramp-rate 2000
  done
done

bench/peers/target/release/floor 1000 300 | tee "$OUT/floor.txt"

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, re, sys
out, rounds = sys.argv[1], int(sys.argv[2])
floor = float(re.search(r"plain write\s*: ([\d.]+)", open(f"{out}/floor.txt").read()).group(1))
print(f"floor (plain write): {floor:.2f} µs per delivery")
print("| scenario | recovery | run | deliveries | loss | p50 ms | p99 ms | server CPU µs/delivery | ÷ floor | ÷ off (same round) | server RSS after, MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for scen in ["fanout-1k", "fanout-10k"]:
    for r in range(1, rounds + 1):
        base = None
        for mode in ["off", "on"]:
            try:
                j = json.load(open(f"{out}/{scen}-{mode}-{r}.json"))
            except (OSError, ValueError):
                print(f"| {scen} | {mode} | {r} | failed ||||||||")
                continue
            s = j.get("server") or {}
            cpu = s.get("cpu_us_per_delivery") or 0
            if mode == "off":
                base = cpu
            ratio = f"{cpu / base:.2f}×" if base and mode == "on" else "—"
            lat = j["latency_us"]
            rss = (s.get("rss_after") or 0) / (1 << 20)
            print(f"| {scen} | {mode} | {r} | {j['received']:,} | {j['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | {cpu:.2f} | {cpu / floor:.2f}× | {ratio} | {rss:.1f} |")
PY
