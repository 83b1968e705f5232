#!/usr/bin/env bash
# Instructions per delivery of two server binaries, counted by callgrind: repeatable whatever
# else the machine is doing, so two builds can be compared on a busy machine where wall-clock
# ratios are not. For each scenario and binary: one run with the clients connected and no
# messages, one with a fixed amount of work; (load - zero) / deliveries, and the same corrected
# for the number of worker-loop passes (which depends on timing, not on the binary). Two
# rounds, the order of the binaries alternating.
#
# usage: bench/run-callgrind.sh BIN_A BIN_B [OUT]    (release binaries with debug info)
# Needs valgrind; the load generator is built from this tree (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 OUT=${3:-bench/results/callgrind}
LT=target/release/shardcast-loadtest
[ -x "$LT" ] || cargo build --release -p shardcast-loadtest
mkdir -p "$OUT"
ulimit -n 20000
. bench/common.sh

# run SCENARIO WHICH(a|b) ROUND MSGS(load|zero)
run() {
  local scen=$1 which=$2 round=$3 msgs=$4 bin port name pid
  bin=$A; [ "$which" = b ] && bin=$B
  port=$((9720 + RANDOM % 200))
  name=$scen-$which-$msgs-$round
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.cg" "$bin" --bind 127.0.0.1:$port --threads 1 --no-pin \
    --ping-interval 25000 --ping-timeout 20000 >"$OUT/$name.server.log" 2>&1 &
  pid=$!
  wait_listening $port "$bin under valgrind" 600
  case $scen in
    fanout-1k)
      rate=10; [ "$msgs" = zero ] && rate=0
      taskset -c 1 $LT fanout --subscribers 1000 --rate $rate --duration 10 --ramp-rate 1000 --target 127.0.0.1:$port --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 ;;
    echo)
      n=400; [ "$msgs" = zero ] && n=0
      taskset -c 1 python3 bench/echo_fixed.py $port 100 $n >"$OUT/$name.txt" 2>&1 ;;
  esac
  sleep 3
  # Under valgrind the server does not see SIGTERM (valgrind keeps it): dump, then kill.
  callgrind_control -d $pid >/dev/null
  kill -9 $pid
  wait $pid 2>/dev/null || true
}

for scen in fanout-1k echo; do
  for round in 1 2; do
    order="a b"; [ $round = 2 ] && order="b a"
    for w in $order; do
      for m in zero load; do run $scen $w $round $m; done
    done
  done
done
python3 bench/callgrind_table.py "$OUT" | tee "$OUT/table.md"
