#!/usr/bin/env bash
# The side-by-side benchmark of issue 5: shardcast against Node's socket.io 4.8 and socketioxide
# 0.18 (each running shared/CONTRACT.md), with the kernel floor measured in the same run.
#
#   bench/run-compare.sh            # called by bench/run.sh; results in bench/results/compare/
#
# Table 1 (--threads 1): every server pinned to core 0, the load generator to core 1.
# Table 2 (--threads 2): every server and the load generator share cores 0-1 (Node's JavaScript
# runs on one thread whatever it is given; socketioxide gets 2 tokio workers; shardcast 2
# workers). Every server uses the production heartbeats (pingInterval 25 s, pingTimeout 20 s):
# the contract's test values (300/200 ms) would make 19,000 idle connections 63,000 pings/s.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
OUT=bench/results/compare
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
DUR=${DUR:-10}
SAT_DUR=${SAT_DUR:-5}
IDLE=${IDLE:-19000}
SERVERS=${SERVERS:-"node socketioxide shardcast"}
ulimit -n "$(ulimit -Hn)"

port=9300
start() { # server threads; sets PID and port
  port=$((port + 1))
  local cores=0
  [ "$2" = 2 ] && cores=0,1
  case $1 in
    shardcast) exec taskset -c $cores target/release/shardcast --bind 127.0.0.1:$port --threads "$2" --no-pin \
                 --ping-interval 25000 --ping-timeout 20000 ;;
    socketioxide) exec taskset -c $cores bench/peers/target/release/socketioxide-contract 127.0.0.1:$port "$2" 25000 20000 ;;
    node) PING_INTERVAL=25000 PING_TIMEOUT=20000 exec taskset -c $cores node tests/interop/js/reference-server.js $port ;;
  esac > "$OUT/server-$1.log" 2>&1 &
  PID=$!  # each branch execs, so this is the server itself
  wait_listening $port "$1"
}

run() { # server threads scenario args...
  local name=$1 threads=$2 scen=$3
  shift 3
  local lg="taskset -c 1 target/release/shardcast-loadtest"
  [ "$threads" = 2 ] && lg="taskset -c 0,1 target/release/shardcast-loadtest"
  start "$name" "$threads"
  local f="$OUT/$scen-$name-t$threads"
  # shellcheck disable=SC2086
  $lg "$@" --threads "$threads" --target 127.0.0.1:$port --server-pid "$PID" --label "$name" --json "$f.json" \
    > "$f.txt" 2>/dev/null || echo "$scen against $name failed (see $f.txt)" >&2
  stop
}

# Raises the rate until a step loses a delivery or its p99 passes 100 ms.
saturate() { # server threads
  for rate in 25 50 100 200 400 700 1000 1500 2000 3000 4000; do
    run "$1" "$2" "sat$rate" fanout --subscribers 1000 --rate $rate --duration "$SAT_DUR" --ramp-rate 2000
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["loss"] == 0 and r["latency_us"]["p99"] <= 100000 and r["received"] > 0 else 1)' \
      "$OUT/sat$rate-$1-t$2.json" 2>/dev/null || break
  done
}

for threads in 1 2; do
  for name in $SERVERS; do
    echo "== $name, --threads $threads" >&2
    run "$name" $threads fanout-1k fanout --subscribers 1000 --rate 100 --duration "$DUR" --ramp-rate 2000
    run "$name" $threads fanout-10k fanout --subscribers 10000 --rate 10 --duration "$DUR" --ramp-rate 2000
    saturate "$name" $threads
    run "$name" $threads echo echo --clients 100 --duration "$DUR"
    run "$name" $threads conns conns --connections "$IDLE" --hold 5 --ramp-rate 3000
    run "$name" $threads churn churn --clients 10 --duration "$DUR"
  done
done

# The kernel's own cost per delivery, same run: 1,000 loopback sockets, 300 rounds.
bench/peers/target/release/floor 1000 300 | tee "$OUT/floor.txt"
