#!/usr/bin/env bash
# Autobahn|Testsuite (fuzzingclient) against `shardcast echo`.
#
#   AB_VENV=/tmp/ab-venv bench/autobahn/run.sh            # every case, 1.* to 13.*
#   AB_VENV=/tmp/ab-venv bench/autobahn/run.sh '1.*' '2.*' # a subset
#
# AB_VENV: a Python 2.7 virtualenv with `pip install autobahntestsuite` (see docs/autobahn.md).
# AB_PORT (default 9001), AB_OUT (default bench/autobahn/reports): where the server listens
# and where the report goes (index.json and the HTML pages; not committed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${AB_VENV:?set AB_VENV to the Python 2.7 virtualenv holding autobahntestsuite}"
port="${AB_PORT:-9001}"
out="${AB_OUT:-$here/reports}"
if [ "$#" -gt 0 ]; then
    cases="$(printf '"%s",' "$@")"; cases="[${cases%,}]"
else
    cases='["*"]'
fi

cd "$root"
cargo build --release --quiet
bin="$root/target/release/shardcast"
"$bin" echo --bind "127.0.0.1:$port" --threads 1 --websocket-compression \
    --max-payload 67108864 --max-send-buffer 134217728 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

mkdir -p "$out"
spec="$out/spec.json"
sed -e "s#\"outdir\": \"[^\"]*\"#\"outdir\": \"$out/server\"#" \
    -e "s#ws://127.0.0.1:9001#ws://127.0.0.1:$port#" \
    -e "s#\"cases\": \[\"\*\"\]#\"cases\": $cases#" \
    "$here/spec.json" > "$spec"
(cd "$out" && "$venv/bin/wstest" -m fuzzingclient -s "$spec")
python3 "$here/summarise.py" "$out/server/index.json"
