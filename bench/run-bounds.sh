#!/usr/bin/env bash
# The "Bounded by construction" figures of docs/benchmarks.md: the runtime and engine rewrite
# against the binary before it, same machine, same run.
#
#   BASELINE=/path/to/old/shardcast bench/run-bounds.sh     # results in bench/results/bounds/
#
# BASELINE is required: a release build of the commit before the rewrite (20fca7a), e.g.
#   git worktree add /tmp/shardcast-base 20fca7a && (cd /tmp/shardcast-base && cargo build --release -p shardcast)
#   BASELINE=/tmp/shardcast-base/target/release/shardcast bench/run-bounds.sh
# The current binary is this checkout's target/release/shardcast (built here).
#
# For both binaries ("base", "head"): fanout 1,000 × 100/s and 10,000 × 10/s, echo 100
# clients, 19,000 idle Socket.IO connections (RSS per connection) without compression, and
# with --websocket-compression where every connection first exchanges one compressed 2 KiB
# message each way (`conns --deflate`); then bench/hostile.py (memory held per hostile byte);
# and the kernel floor once. Server pinned to core 0 (--threads 1), load generator to core 1,
# production heartbeats (25 s / 20 s). About 6 minutes of load plus 2 × < 5 min of hostile.py.
# Variables: DUR (10), IDLE (19000), SKIP_HOSTILE=1, ONLY="base head",
# SCENARIOS="fanout-1k fanout-10k echo conns conns-deflate", OUT (bench/results/bounds),
# SKIP_BUILD=1 (use the binaries already built).
#
# The I/O backends against each other (issue 11): ONLY="uring epoll" runs this checkout's binary
# twice, as two "servers", with `--io uring` and with `--io epoll` (BASELINE is then not needed):
#   ONLY="uring epoll" SCENARIOS="fanout-1k fanout-10k echo" SKIP_HOSTILE=1 OUT=bench/results/io \
#     flock /tmp/shardcast-bench.lock bench/run-bounds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
OUT=${OUT:-bench/results/bounds}
mkdir -p "$OUT"
DUR=${DUR:-10}
IDLE=${IDLE:-19000}
ONLY=${ONLY:-"base head"}
case " $ONLY " in
  *" base "*) : "${BASELINE:?set BASELINE to the baseline shardcast binary (a release build of 20fca7a)}" ;;
esac
SCENARIOS=${SCENARIOS:-"fanout-1k fanout-10k echo conns conns-deflate"}
ulimit -n "$(ulimit -Hn)"
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p shardcast -p shardcast-loadtest
  (cd bench/peers && cargo build --release --bin floor)
fi

bin() { case $1 in base) echo "$BASELINE" ;; *) echo target/release/shardcast ;; esac; }
# The backend runs choose theirs explicitly; base and head keep their default.
io() { case $1 in uring | epoll) echo "--io $1" ;; esac; }

port=9500
start() { # which extra-server-flags...; sets PID and port
  local which=$1; shift
  port=$((port + 1))
  # shellcheck disable=SC2046
  taskset -c 0 "$(bin "$which")" --bind 127.0.0.1:$port --threads 1 --no-pin $(io "$which") \
    --ping-interval 25000 --ping-timeout 20000 "$@" > "$OUT/server-$which.log" 2>&1 &
  PID=$!
  wait_listening $port "$which"
}

run() { # which name server-flags(one word, "-" for none) scenario args...
  local which=$1 name=$2 flags=$3 scen=$4
  shift 4
  case " $SCENARIOS " in *" $name "*) ;; *) return 0 ;; esac
  if [ "$flags" = - ]; then start "$which"; else start "$which" "$flags"; fi
  local f="$OUT/$name-$which"
  taskset -c 1 target/release/shardcast-loadtest "$scen" "$@" --target 127.0.0.1:$port --server-pid "$PID" \
    --label "$which" --json "$f.json" > "$f.txt" 2>/dev/null || echo "$name against $which failed (see $f.txt)" >&2
  stop
}

for which in $ONLY; do
  echo "== $which: $(bin "$which")" >&2
  run "$which" fanout-1k - fanout --subscribers 1000 --rate 100 --duration "$DUR" --ramp-rate 2000
  run "$which" fanout-10k - fanout --subscribers 10000 --rate 10 --duration "$DUR" --ramp-rate 2000
  run "$which" echo - echo --clients 100 --duration "$DUR"
  run "$which" conns - conns --connections "$IDLE" --hold 5 --ramp-rate 3000
  run "$which" conns-deflate --websocket-compression conns --connections "$IDLE" --hold 5 --ramp-rate 3000 --deflate
done

# The kernel's own cost per delivery, same run: 1,000 loopback sockets, 300 rounds.
bench/peers/target/release/floor 1000 300 | tee "$OUT/floor.txt"

if [ -z "${SKIP_HOSTILE:-}" ]; then
  for which in $ONLY; do
    python3 bench/hostile.py --json "$OUT/hostile-$which.json" "$(bin "$which")" | tee "$OUT/hostile-$which.txt"
  done
fi

python3 - "$OUT" "$ONLY" <<'PY'
import json, os, re, sys
out = sys.argv[1]
only = sys.argv[2].split()
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
t = open(f"{out}/floor.txt").read()
floor = float(re.search(r"plain write\s*: ([\d.]+)", t).group(1))
print(f"floor (plain write): {floor:.2f} µs per delivery")
print("| scenario | binary | rate/s | loss | p50 ms | p99 ms | server CPU µs/unit | ÷ floor | RSS/conn KiB |")
print("|---|---|---|---|---|---|---|---|---|")
for scen in ["fanout-1k", "fanout-10k", "echo", "conns", "conns-deflate"]:
    for which in only:
        r = load(f"{out}/{scen}-{which}.json")
        if not r:
            if os.path.exists(f"{out}/{scen}-{which}.txt"):
                print(f"| {scen} | {which} | failed |||||||")
            continue
        s = r.get("server") or {}
        unit = s.get("cpu_us_per_connect") if scen.startswith("conns") else s.get("cpu_us_per_delivery")
        fl = f"{unit / floor:.2f}×" if scen.startswith("fanout") and unit else "—"
        rss = f"{s.get('rss_per_connection', 0) / 1024:.1f}" if scen.startswith("conns") or scen == "fanout-10k" else "—"
        lat = r["latency_us"]
        print(f"| {scen} | {which} | {r['rate']:,.0f} | {r['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | {unit or 0:.2f} | {fl} | {rss} |")
PY
