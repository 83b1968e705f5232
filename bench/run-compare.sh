#!/usr/bin/env bash
# Side-by-side runs against Node's socket.io 4.8 (the contract app in
# tests/interop/js/reference-server.js), with the kernel floor measured in the same run.
# Server pinned to core 0, load generator to core 1. Results in bench/results/compare-*.json and
# bench/results/compare.md. (The socketioxide peer is not written yet.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
DUR=${DUR:-10}
cargo build --release -p shardcast -p shardcast-loadtest
(cd bench/peers && cargo build --release --bin floor)
(cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error)
LG="taskset -c 1 target/release/shardcast-loadtest"

start() { # name, port
  case $1 in
    shardcast) taskset -c 0 target/release/shardcast --bind 127.0.0.1:$2 --threads 1 --no-pin > "$OUT/compare-$1.log" 2>&1 & ;;
    node) (cd tests/interop/js && exec taskset -c 0 node reference-server.js "$2") > "$OUT/compare-$1.log" 2>&1 & ;;
  esac
  PID=$!
  sleep 1.5
  [ "$1" = node ] && PID=$(pgrep -f "reference-server.js $2")
  true
}
stop() { kill -INT "$PID" 2>/dev/null || true; sleep 0.5; kill -9 "$PID" 2>/dev/null || true; }

port=9100
for name in node shardcast; do
  for scen in fanout-1k fanout-10k echo conns churn; do
    port=$((port + 1))
    start "$name" "$port"
    common=(--target 127.0.0.1:$port --server-pid "$PID" --label "$name" --json "$OUT/compare-$scen-$name.json")
    case $scen in
      fanout-1k)  $LG fanout --subscribers 1000 --rate 100 --duration "$DUR" --ramp-rate 1000 "${common[@]}" ;;
      fanout-10k) $LG fanout --subscribers 10000 --rate 10 --duration "$DUR" --ramp-rate 1000 "${common[@]}" ;;
      echo)       $LG echo --clients 100 --duration "$DUR" "${common[@]}" ;;
      conns)      $LG conns --connections 5000 --hold 5 --ramp-rate 1000 "${common[@]}" ;;
      churn)      $LG churn --clients 10 --duration "$DUR" "${common[@]}" ;;
    esac > "$OUT/compare-$scen-$name.txt" 2>/dev/null
    stop
  done
done
bench/peers/target/release/floor 1000 300 | tee "$OUT/compare-floor.txt"

python3 - "$OUT" <<'PY' | tee "$OUT/compare.md"
import json, re, sys
out = sys.argv[1]
floor = open(f"{out}/compare-floor.txt").read()
fw = float(re.search(r"plain write\s*: ([\d.]+)", floor).group(1))
fu = float(re.search(r"io_uring batched : ([\d.]+)", floor).group(1))
print(f"kernel floor this run: plain write {fw:.2f} µs, io_uring batched {fu:.2f} µs sender CPU per delivery\n")
print("| scenario | server | rate/s | loss | p50 ms | p99 ms | server CPU µs/unit | ÷ floor (write) | RSS/conn KiB | loadgen CPU µs/unit |")
print("|---|---|---|---|---|---|---|---|---|---|")
for scen in ["fanout-1k", "fanout-10k", "echo", "conns", "churn"]:
    for name in ["node", "shardcast"]:
        try:
            r = json.load(open(f"{out}/compare-{scen}-{name}.json"))
        except FileNotFoundError:
            continue
        s = r.get("server") or {}
        cpu = s.get("cpu_us_per_connect") if scen in ("conns", "churn") and s.get("cpu_us_per_connect") else s.get("cpu_us_per_delivery", 0)
        l = r["latency_us"]
        print(f"| {scen} | {name} | {r['rate']:.0f} | {r['loss']*100:.3f}% | {l['p50']/1000:.2f} | {l['p99']/1000:.2f} | {cpu:.2f} | {cpu/fw:.2f}× | {s.get('rss_per_connection', 0)/1024:.1f} | {r['loadgen_cpu_us_per_delivery']:.2f} |")
PY
