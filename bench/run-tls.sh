#!/usr/bin/env bash
# The "TLS on the public port" figures of docs/benchmarks.md: fanout over plain TCP and over
# TLS (rustls in user space), the same binary, the same run, with the kernel floor.
#
#   flock /tmp/shardcast-bench.lock bench/run-tls.sh     # results in bench/results/tls/
#
# One server core (`--threads 1 --no-pin` under `taskset -c 0`), the load generator on core 1
# (`--tls --tls-ca` for the TLS runs: a rustls client, so it decrypts every delivery too),
# production heartbeats. A self-signed P-256 certificate for localhost/127.0.0.1 is made with
# openssl for the run. kTLS is measured where the kernel offers it (`tls` in
# /proc/sys/net/ipv4/tcp_available_ulp); the script says so when it does not.
# Each scenario runs REPEAT times, plain and TLS alternating (on a shared machine one run of
# each is noise); the table gives every run and the medians.
# Variables: DUR (10), REPEAT (3), SCENARIOS ("fanout-1k fanout-10k"), OUT (bench/results/tls),
# FLOOR (a built `floor` binary; default: build bench/peers).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
OUT=${OUT:-bench/results/tls}
mkdir -p "$OUT"
DUR=${DUR:-10}
REPEAT=${REPEAT:-3}
SCENARIOS=${SCENARIOS:-"fanout-1k fanout-10k"}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p shardcast -p shardcast-loadtest
if [ -z "${FLOOR:-}" ]; then
  (cd bench/peers && cargo build --release --bin floor)
  FLOOR=bench/peers/target/release/floor
fi

CERT_DIR=$(mktemp -d)
trap 'rm -rf "$CERT_DIR"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$CERT_DIR/key.pem" -out "$CERT_DIR/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE 2>/dev/null

if grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null; then
  echo "kTLS: offered by this kernel" | tee "$OUT/ktls.txt"
else
  echo "kTLS: not offered by this kernel (tcp_available_ulp: $(cat /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null)); rustls in user space only" | tee "$OUT/ktls.txt"
fi

port=9600
start() { # mode; sets PID and port
  port=$((port + 1))
  local tls=()
  [ "$1" = tls ] && tls=(--tls-cert "$CERT_DIR/cert.pem" --tls-key "$CERT_DIR/key.pem")
  taskset -c 0 target/release/shardcast --bind 127.0.0.1:$port --threads 1 --no-pin \
    --ping-interval 25000 --ping-timeout 20000 "${tls[@]}" > "$OUT/server-$1.log" 2>&1 &
  PID=$!
  wait_listening $port "$1"
}

run() { # mode name run args...
  local mode=$1 name=$2 i=$3
  shift 3
  case " $SCENARIOS " in *" $name "*) ;; *) return 0 ;; esac
  start "$mode"
  local f="$OUT/$name-$mode-$i" tls=()
  [ "$mode" = tls ] && tls=(--tls --tls-ca "$CERT_DIR/cert.pem")
  taskset -c 1 target/release/shardcast-loadtest fanout "$@" "${tls[@]}" --target 127.0.0.1:$port --server-pid "$PID" \
    --label "$mode" --json "$f.json" > "$f.txt" 2>/dev/null || echo "$name over $mode failed (see $f.txt)" >&2
  stop
}

for i in $(seq "$REPEAT"); do
  for mode in plain tls; do
    run "$mode" fanout-1k "$i" --subscribers 1000 --rate 100 --duration "$DUR" --ramp-rate 2000
    run "$mode" fanout-10k "$i" --subscribers 10000 --rate 10 --duration "$DUR" --ramp-rate 2000
  done
done

# The kernel's own cost per delivery, same run: 1,000 loopback sockets, 300 rounds.
"$FLOOR" 1000 300 | tee "$OUT/floor.txt"

python3 - "$OUT" "$REPEAT" <<'PY'
import json, re, statistics, sys
out, repeat = sys.argv[1], int(sys.argv[2])
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
floor = float(re.search(r"plain write\s*: ([\d.]+)", open(f"{out}/floor.txt").read()).group(1))
print(f"floor (plain write): {floor:.2f} µs per delivery")
print("| scenario | transport | runs: server CPU µs/delivery | median | ÷ floor | ÷ plain | loss (worst) | p50 ms (median) | p99 ms (median) | server RSS/conn KiB (median) | load generator CPU µs/delivery (median) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for scen in ["fanout-1k", "fanout-10k"]:
    base = None
    for mode in ["plain", "tls"]:
        rs = [r for r in (load(f"{out}/{scen}-{mode}-{i}.json") for i in range(1, repeat + 1)) if r]
        if not rs:
            continue
        cpu = [(r.get("server") or {}).get("cpu_us_per_delivery") or 0 for r in rs]
        med = statistics.median(cpu)
        base = med if mode == "plain" else base
        rel = f"{med / base:.2f}×" if base else "—"
        loss = max(r["loss"] for r in rs)
        p50 = statistics.median(r["latency_us"]["p50"] for r in rs) / 1000
        p99 = statistics.median(r["latency_us"]["p99"] for r in rs) / 1000
        rss = [(r.get("server") or {}).get("rss_per_connection") for r in rs]
        rss = [x for x in rss if x]
        rss = f"{statistics.median(rss) / 1024:.1f}" if rss else "—"
        lg = statistics.median(r.get("loadgen_cpu_us_per_delivery") or 0 for r in rs)
        name = "TLS (rustls, user space)" if mode == "tls" else "plain TCP"
        runs = ", ".join(f"{c:.2f}" for c in cpu)
        print(f"| {scen} | {name} | {runs} | {med:.2f} | {med / floor:.2f}× | {rel} | {loss * 100:.2f}% | {p50:.2f} | {p99:.2f} | {rss} | {lg:.2f} |")
PY
