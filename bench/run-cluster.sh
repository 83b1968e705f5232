#!/usr/bin/env bash
# Fanout across a cluster (issue 12): the same fanout (1,000 subscribers in one room, one
# publisher sending `to-room` at RATE msg/s for DUR s) on
#   - one shardcast node (--threads 2), this commit, and the binary in $BASELINE (a release
#     build from before the adapter seam) — the seam must cost nothing when --redis is off;
#   - two shardcast nodes (--threads 1 each) joined by Redis, subscribers split between them,
#     the publisher on the first; the same with --redis-sharded (Redis 7 sharded pub/sub), and
#     with --redis-format bridge (each broadcast published in both formats);
#   - two Node socket.io 4.8 nodes with @socket.io/redis-adapter, split the same way;
#   - one Node socket.io node, for scale.
# Everything (servers, redis-server, load generator) shares cores 0-1; heartbeats are the
# production ones (25 s / 20 s). Results in bench/results/cluster/; bench/render.py makes the
# table. Run it alone: `flock /tmp/shardcast-bench.lock bench/run-cluster.sh`.
#
#   BASELINE=/path/to/old/shardcast bench/run-cluster.sh
#   OUT=bench/results/cluster/single SINGLE_ONLY=1 ROUNDS=4 BASELINE=... bench/run-cluster.sh
#   OUT=bench/results/cluster/modes ROUNDS=1 bench/run-cluster.sh   # no baseline binary
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
OUT=${OUT:-bench/results/cluster}
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log
DUR=${DUR:-10}
RATE=${RATE:-100}
SUBS=${SUBS:-1000}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p shardcast -p shardcast-loadtest
(cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error)

RPORT=9390
redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly no > "$OUT/redis.log" 2>&1 &
RPID=$!
trap 'kill $RPID 2>/dev/null || true' EXIT
wait_listening $RPORT redis-server
URL=redis://127.0.0.1:$RPORT/

PIDS=()
port=9400
start() { # kind [--redis]; appends to PIDS, sets port
  port=$((port + 1))
  local bin=target/release/shardcast threads=2 redis=()
  case $1 in
    base) bin=$BASELINE ;;
    shardcast-node) threads=1; redis=(--redis "$URL") ;;
    shardcast-sharded) threads=1; redis=(--redis "$URL" --redis-sharded) ;;
    shardcast-bridge) threads=1; redis=(--redis "$URL" --redis-format bridge) ;;
  esac
  case $1 in
    node | node-cluster)
      local env=()
      [ "$1" = node-cluster ] && env=(REDIS_URL="$URL")
      exec env PING_INTERVAL=25000 PING_TIMEOUT=20000 "${env[@]}" taskset -c 0,1 node tests/interop/js/reference-server.js $port ;;
    *) exec taskset -c 0,1 "$bin" --bind 127.0.0.1:$port --threads $threads --no-pin --ping-interval 25000 --ping-timeout 20000 "${redis[@]}" ;;
  esac > "$OUT/server-$1-$port.log" 2>&1 &
  PIDS+=($!)
  wait_listening $port "$1"
}

stop_all() {
  for PID in "${PIDS[@]}"; do stop; done
  PIDS=()
}

run() { # name kind nodes
  local name=$1 kind=$2 nodes=$3 also=()
  start "$kind"
  local first=$port
  for _ in $(seq 2 "$nodes"); do
    start "$kind"
    also+=(--also-target 127.0.0.1:$port)
  done
  # Let every node subscribe before the subscribers join.
  sleep 1
  local cpu=()
  [ "$nodes" = 1 ] && cpu=(--server-pid "${PIDS[0]}")
  taskset -c 0,1 target/release/shardcast-loadtest fanout --threads 2 --target 127.0.0.1:$first "${also[@]}" "${cpu[@]}" \
    --subscribers "$SUBS" --rate "$RATE" --duration "$DUR" --ramp-rate 2000 --label "$name" --json "$OUT/$name.json" \
    > "$OUT/$name.txt" 2>/dev/null || echo "$name failed (see $OUT/$name.txt)" >&2
  stop_all
}

for round in $(seq "${ROUNDS:-2}"); do
  if [ -n "${BASELINE:-}" ]; then run "one-base-r$round" base 1; fi
  run "one-head-r$round" head 1
done
# SINGLE_ONLY=1: only the seam-off comparison above.
if [ -z "${SINGLE_ONLY:-}" ]; then
  run two-shardcast shardcast-node 2
  run two-shardcast-sharded shardcast-sharded 2
  run two-shardcast-bridge shardcast-bridge 2
  run two-node node-cluster 2
  run one-node node 1
fi
