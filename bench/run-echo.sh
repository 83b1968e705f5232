#!/usr/bin/env bash
# Issue 3's echo benchmark, reproducible: shardcast's raw WebSocket echo against two comparison
# echo servers (tokio-tungstenite on tokio, and tokio-uring with shardcast's codec), same client,
# same machine, one run. Servers are pinned to core 0, the load generator to core 1.
#   messages/s and latency at 100 connections; memory per idle connection at 10,000.
# Then a 60 s soak of 10,000 idle Socket.IO sessions on the default app with heartbeats.
# Results: bench/results/*.json and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
OUT=bench/results
mkdir -p "$OUT"
DUR=${DUR:-10}
IDLE=${IDLE:-10000}
SOAK=${SOAK:-60}

cargo build --release -p shardcast -p shardcast-loadtest
(cd bench/peers && cargo build --release)
LG="taskset -c 1 target/release/shardcast-loadtest"

start() { # name, command...; sets PID
  local name=$1; shift
  taskset -c 0 "$@" > "$OUT/$name.log" 2>&1 &
  PID=$!
  sleep 1
}

declare -A SERVERS=(
  [shardcast]="target/release/shardcast echo --bind 127.0.0.1:9000 --threads 1 --no-pin"
  [tokio-tungstenite]="bench/peers/target/release/echo-tokio-tungstenite 127.0.0.1:9001"
  [tokio-uring]="bench/peers/target/release/echo-tokio-uring 127.0.0.1:9002"
)
declare -A PORTS=([shardcast]=9000 [tokio-tungstenite]=9001 [tokio-uring]=9002)

for name in shardcast tokio-tungstenite tokio-uring; do
  # shellcheck disable=SC2086
  start "$name" ${SERVERS[$name]}
  $LG echo --protocol raw --target 127.0.0.1:${PORTS[$name]} --path /echo --clients 100 --duration "$DUR" \
     --server-pid "$PID" --label "$name" --json "$OUT/echo-$name.json" > "$OUT/echo-$name.txt"
  stop
  # shellcheck disable=SC2086
  start "$name" ${SERVERS[$name]}
  $LG conns --protocol raw --target 127.0.0.1:${PORTS[$name]} --path /echo --connections "$IDLE" --hold 5 \
     --server-pid "$PID" --label "$name" --json "$OUT/idle-$name.json" > "$OUT/idle-$name.txt"
  stop
done

# 10,000 idle Socket.IO sessions on the default app (pingInterval 300 ms, pingTimeout 200 ms).
start soak target/release/shardcast --bind 127.0.0.1:9000 --threads 1 --no-pin
$LG conns --target 127.0.0.1:9000 --connections "$IDLE" --hold "$SOAK" --ramp-rate 1000 --server-pid "$PID" \
   --label shardcast-soak --json "$OUT/soak.json" > "$OUT/soak.txt"
stop

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| server | msgs/s (100 conns) | p50 µs | p99 µs | server CPU µs/msg | RSS per idle conn (10k) |")
print("|---|---|---|---|---|---|")
for n in ["shardcast", "tokio-tungstenite", "tokio-uring"]:
    e = json.load(open(f"{out}/echo-{n}.json")); i = json.load(open(f"{out}/idle-{n}.json"))
    s = e.get("server") or {}; si = i.get("server") or {}
    print(f"| {n} | {e['rate']:.0f} | {e['latency_us']['p50']} | {e['latency_us']['p99']} | {s.get('cpu_us_per_delivery', 0):.2f} | {si.get('rss_per_connection', 0)/1024:.1f} KiB |")
s = json.load(open(f"{out}/soak.json"))
x = s["extra"]; sv = s.get("server") or {}
print(f"\nsoak: {s['received']} of {s['expected']} sessions connected at {x['connect_rate']:.0f}/s, held {x['held_seconds']:.0f} s, "
      f"closed during hold: {x['closed_during_hold']}, server CPU while holding: {sv.get('hold_cpu_percent', 0):.1f}% of a core, "
      f"RSS per session {sv.get('rss_per_connection', 0)/1024:.1f} KiB")
PY
