#!/usr/bin/env bash
# Reproduces every table of docs/benchmarks.md from a clean checkout, on this machine, in one run
# (about 30 minutes on 2 cores), then rewrites the page from bench/benchmarks.md.in:
#
#   bench/run.sh
#
# 1. criterion benches of the hot path (benches/: mask, codec, broadcast);
# 2. bench/run-echo.sh: shardcast's runtime against tokio-tungstenite and tokio-uring, and the
#    10,000-session heartbeat soak;
#    then the SEND_ZC probe;
# 3. bench/run-compare.sh: against Node socket.io 4.8 and socketioxide 0.18, with the floor;
# 4. with BASELINE=/path/to/shardcast (a release build of 20fca7a, before the bounded rewrite):
#    bench/run-bounds.sh, the "Bounded by construction" section (about 5 more minutes);
# 5. bench/run-cluster.sh: fanout across two nodes through Redis (shardcast and Node), and one
#    node with and (with BASELINE) without the adapter seam (about 3 more minutes; needs
#    redis-server);
# 6. bench/render.py: the page, with the date and the machine.
# Needs: cargo, node + npm (for the Node peer), python3, taskset. Two cores at least.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shardcast -p shardcast-loadtest
(cd bench/peers && cargo build --release)
(cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error)

cargo bench --bench mask -- --warm-up-time 1 --measurement-time 2
cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3
cargo bench --bench broadcast
bench/run-echo.sh
taskset -c 0 bench/peers/target/release/sendzc-probe | tee bench/results/sendzc.md
bench/run-compare.sh
if [ -n "${BASELINE:-}" ]; then bench/run-bounds.sh; fi
bench/run-cluster.sh
python3 bench/render.py
