#!/usr/bin/env python3
"""Writes docs/benchmarks.md from bench/benchmarks.md.in and the results of one bench/run.sh run.

Every {{name}} in the template is replaced by a table built from bench/results/ (the load
generator's JSON reports, the floor program's output) and target/criterion/ (criterion's
estimates). Nothing here measures; a missing result shows as "—" rather than a stale figure.
"""
import glob
import json
import os
import platform
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = os.path.join(ROOT, "bench", "results")
CMP = os.path.join(RES, "compare")
BOUNDS = os.path.join(RES, "bounds")
METRICS = os.path.join(RES, "metrics")
CRIT = os.path.join(ROOT, "target", "criterion")
SERVERS = ["node", "socketioxide", "shardcast"]
NAMES = {"node": "Node socket.io 4.8.4", "socketioxide": "socketioxide 0.18.9", "shardcast": "shardcast"}
DASH = "—"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def crit_ns(*parts):
    r = load(os.path.join(CRIT, *parts, "new", "estimates.json"))
    return r["median"]["point_estimate"] if r else None


def fmt_ns(ns):
    if ns is None:
        return DASH
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.2f} ns"


def ratio(a, b, digits=2):
    return f"{a / b:.{digits}f}×" if a and b else DASH


def machine():
    model = DASH
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
        mem = f"{int(mem) / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        mem = DASH
    return f"{model}, {os.cpu_count()} cores, {mem}, Linux {platform.release()}"


def floor():
    try:
        text = open(os.path.join(CMP, "floor.txt")).read()
    except OSError:
        return None, None
    w = re.search(r"plain write\s*: ([\d.]+)", text)
    u = re.search(r"io_uring batched : ([\d.]+)", text)
    return float(w.group(1)), float(u.group(1))


def mask_table():
    sizes = [16, 125, 1024, 16384, 1048576]
    label = {16: "16 B", 125: "125 B", 1024: "1 KiB", 16384: "16 KiB", 1048576: "1 MiB"}
    rows = ["| size | simd | word fallback | naive loop | memcpy | simd ÷ naive (speed) | simd ÷ memcpy (throughput) |",
            "|---|---|---|---|---|---|---|"]
    for s in sizes:
        v = {k: crit_ns("unmask", k, str(s)) for k in ["simd", "word", "naive", "memcpy"]}
        rows.append(f"| {label[s]} | {fmt_ns(v['simd'])} | {fmt_ns(v['word'])} | {fmt_ns(v['naive'])} | {fmt_ns(v['memcpy'])} "
                    f"| {ratio(v['naive'], v['simd'], 1)} | {ratio(v['memcpy'], v['simd'])} |")
    return "\n".join(rows)


def codec_table():
    rows = ["| bench | median time |", "|---|---|"]
    items = [
        (("ws_decode", "text_frames_x64", "100"), "decode 64 masked 100-byte text frames (unmask in place + UTF-8)"),
        (("ws_decode", "text_frames_x64", "16384"), "decode 64 masked 16 KiB text frames"),
        (("sio_event", "encode"), "encode an EVENT (`[\"room-message\",{..},[1,2,3]]`) into one buffer with WS header room"),
        (("sio_event", "decode_packet_simd_json"), "decode the same EVENT, whole packet (simd-json in place)"),
        (("sio_event", "parse_json_simd_json"), "its JSON only: simd-json (serde bridge → `serde_json::Value`)"),
        (("sio_event", "parse_json_serde_json"), "its JSON only: serde_json"),
    ]
    for parts, what in items:
        rows.append(f"| {what} | {fmt_ns(crit_ns(*parts))} |")
    return "\n".join(rows)


def broadcast_table():
    a = crit_ns("broadcast_10k_sockets_2_workers", "encode_once_and_deliver")
    b = crit_ns("broadcast_10k_sockets_2_workers", "encode_only_10k_times")
    per = lambda ns: fmt_ns(ns / 10000) if ns else DASH
    return "\n".join([
        "| bench | time per iteration | per recipient |", "|---|---|---|",
        f"| broadcast to 10,000 (encode once + deliver on 2 workers) | {fmt_ns(a)} | {per(a)} |",
        f"| encode the event 10,000 times (no delivery at all) | {fmt_ns(b)} | {per(b)} |",
        f"| ratio | {ratio(a, b)} | |",
    ])


def echo_peers_table():
    rows = ["| server | messages/s | p50 | p99 | server CPU per message | vs shardcast | RSS per idle connection | connect rate |",
            "|---|---|---|---|---|---|---|---|"]
    base = None
    for n in ["shardcast", "tokio-tungstenite", "tokio-uring"]:
        e, i = load(os.path.join(RES, f"echo-{n}.json")), load(os.path.join(RES, f"idle-{n}.json"))
        if not e or not i:
            rows.append(f"| {n} | {DASH} |||||||")
            continue
        cpu = (e.get("server") or {}).get("cpu_us_per_delivery")
        base = base or cpu
        rss = (i.get("server") or {}).get("rss_per_connection", 0) / 1024
        rows.append(f"| {n} | {e['rate']:,.0f} | {e['latency_us']['p50'] / 1000:.2f} ms | {e['latency_us']['p99'] / 1000:.2f} ms "
                    f"| {cpu:.2f} µs | {ratio(cpu, base)} | {rss:.1f} KiB | {i['rate']:,.0f}/s |")
    return "\n".join(rows)


def soak_table():
    s = load(os.path.join(RES, "soak.json"))
    if not s:
        return DASH
    x, sv = s["extra"], s.get("server") or {}
    return "\n".join([
        "| sessions | ramp | closed during ramp | closed during the hold | hold | server CPU while holding | server RSS per session |",
        "|---|---|---|---|---|---|---|",
        f"| {s['received']:,} of {s['expected']:,} | {x['ramp_seconds']:.1f} s | {x['closed_during_ramp']} | **{x['closed_during_hold']}** "
        f"| {x['held_seconds']:.0f} s | {sv.get('hold_cpu_percent', 0):.0f}% of one core | {sv.get('rss_per_connection', 0) / 1024:.1f} KiB |",
    ])


def cmp(scen, name, t):
    return load(os.path.join(CMP, f"{scen}-{name}-t{t}.json"))


def saturation(name, t):
    """(best passing report, first failing report) of the saturation ladder."""
    steps = []
    for f in glob.glob(os.path.join(CMP, f"sat*-{name}-t{t}.json")):
        r = load(f)
        if r:
            steps.append((r["params"]["rate"], r))
    steps.sort(key=lambda s: s[0])
    best = fail = None
    for _, r in steps:
        ok = r["loss"] == 0 and r["latency_us"]["p99"] <= 100000 and r["received"] > 0
        if ok:
            best = r
        else:
            fail = r
            break
    return best, fail


def compare_table(t):
    fw, _ = floor()
    rows = ["| scenario | server | rate/s | loss | p50 ms | p99 ms | server CPU µs/unit | ÷ floor | server RSS/conn KiB | load generator CPU µs/unit |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for scen, label in [("fanout-1k", "fanout 1,000 × 100/s"), ("fanout-10k", "fanout 10,000 × 10/s"), ("echo", "echo 100 clients"),
                        ("conns", "conns 19,000 idle"), ("churn", "churn 10 clients")]:
        for n in SERVERS:
            r = cmp(scen, n, t)
            if not r:
                rows.append(f"| {label} | {NAMES[n]} | failed ||||||||")
                continue
            s = r.get("server") or {}
            unit = s.get("cpu_us_per_connect") if scen in ("conns", "churn") else s.get("cpu_us_per_delivery")
            fl = ratio(unit, fw) if scen.startswith("fanout") else DASH
            rss = s.get("rss_per_connection", 0) / 1024 if scen in ("conns", "fanout-10k") else None
            lat = r["latency_us"]
            rows.append(f"| {label} | {NAMES[n]} | {r['rate']:,.0f} | {r['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} "
                        f"| {unit or 0:.2f} | {fl} | {f'{rss:.1f}' if rss is not None else DASH} | {r['loadgen_cpu_us_per_delivery']:.2f} |")
    return "\n".join(rows)


def saturation_table(t):
    fw, _ = floor()
    rows = ["| server | highest rate that held (deliveries/s) | its p99 | server CPU µs/delivery | ÷ floor | next step | what failed there |",
            "|---|---|---|---|---|---|---|"]
    for n in SERVERS:
        best, fail = saturation(n, t)
        b = f"{best['rate']:,.0f} ({best['params']['rate']} msg/s)" if best else "none"
        p99 = f"{best['latency_us']['p99'] / 1000:.1f} ms" if best else DASH
        cpu = (best.get("server") or {}).get("cpu_us_per_delivery") if best else None
        if fail:
            why = []
            if fail["loss"] > 0:
                why.append(f"loss {fail['loss'] * 100:.1f}%")
            if fail["latency_us"]["p99"] > 100000:
                why.append(f"p99 {fail['latency_us']['p99'] / 1000:.0f} ms")
            nxt, why = f"{fail['params']['rate']} msg/s", ", ".join(why) or "no deliveries"
        else:
            nxt, why = DASH, "ladder ended (4,000 msg/s) without failing"
        rows.append(f"| {NAMES[n]} | {b} | {p99} | {f'{cpu:.2f}' if cpu else DASH} | {ratio(cpu, fw)} | {nxt} | {why} |")
    return "\n".join(rows)


def targets_table():
    fw, fu = floor()
    f1, f10, ec, co = (cmp(s, "shardcast", 1) for s in ["fanout-1k", "fanout-10k", "echo", "conns"])
    best, _ = saturation("shardcast", 1)
    rows = ["| target | measured (shardcast, one core) | met? |", "|---|---|---|"]

    def row(what, value, ok, note=""):
        rows.append(f"| {what} | {value} | {'yes' if ok else '**no**'}{note} |")

    if f1 and fw:
        c = f1["server"]["cpu_us_per_delivery"]
        row("fanout 1,000 × 100/s: CPU per delivery ≤ 1.15× floor", f"{c:.2f} µs = {c / fw:.2f}× the {fw:.2f} µs floor", c / fw <= 1.15)
        p = f1["latency_us"]["p99"] / 1000
        serial = fw * 1000 / 1000
        row("fanout 1,000 × 100/s: p99 ≤ 3 ms", f"{p:.2f} ms (1,000 serial sends at the floor take {serial:.1f} ms here)", p <= 3,
            f" ({p / 3:.1f}× the target)" if p > 3 else "")
    if f10:
        p = f10["latency_us"]["p99"] / 1000
        row("fanout 10,000 × 10/s: p99 ≤ 30 ms", f"{p:.1f} ms (10,000 serial sends at the floor: {fw * 10:.0f} ms)", p <= 30,
            f" ({p / 30:.1f}× the target)" if p > 30 else "")
    m = cmp("sat1000", "shardcast", 1)
    if m:
        c = m["server"]["cpu_us_per_delivery"]
        row("saturation: 1,000,000 deliveries/s, no loss, p99 ≤ 50 ms (the 1,000 msg/s step)",
            f"{m['rate']:,.0f}/s, loss {m['loss'] * 100:.2f}%, p99 {m['latency_us']['p99'] / 1000:.1f} ms, {c:.2f} µs/delivery "
            f"({ratio(c, fw)} the single-send floor: frames queued for one socket leave in one send)"
            + (f"; the ladder held up to {best['rate']:,.0f}/s" if best else ""),
            m["rate"] >= 990000 and m["loss"] == 0 and m["latency_us"]["p99"] <= 50000)
    if co:
        rss = co["server"]["rss_per_connection"] / 1024
        row("≤ 4 KiB server RSS per idle connection", f"{rss:.1f} KiB (Socket.IO session)", rss <= 4, f" ({rss / 4:.2f}× the target)" if rss > 4 else "")
        c = co["server"]["cpu_us_per_connect"]
        row("≤ 20 µs server CPU per connect", f"{c:.1f} µs", c <= 20, f" ({c / 20:.1f}× the target)" if c > 20 else "")
    if ec:
        c = ec["server"]["cpu_us_per_delivery"]
        row("echo 100 clients: ≤ 3 µs server CPU per round trip", f"{c:.2f} µs ({ratio(c, fw)} one plain-write floor)", c <= 3,
            f" ({c / 3:.1f}× the target)" if c > 3 else "")
    return "\n".join(rows)


def sendzc():
    try:
        return open(os.path.join(RES, "sendzc.md")).read().strip()
    except OSError:
        return DASH


def floor_line():
    fw, fu = floor()
    if fw is None:
        return DASH
    return (f"Kernel floor measured in this run (`bench/peers` `floor 1000 300`): a 102-byte frame written to 1,000 loopback "
            f"sockets costs **{fw:.2f} µs** of sender CPU per delivery with plain `write(2)` and **{fu:.2f} µs** with io_uring "
            f"sends batched one submission per round.")


def bounds_floor():
    try:
        text = open(os.path.join(BOUNDS, "floor.txt")).read()
    except OSError:
        return None
    w = re.search(r"plain write\s*: ([\d.]+)", text)
    return float(w.group(1)) if w else None


BOUNDS_BIN = {"base": "before (20fca7a)", "head": "after (rewrite)"}


def bounds_idle_table():
    """(A) RSS per idle connection, with and without compression, before and after."""
    rows = ["| server | connections | compression | server RSS per connection | compressed replies | connect rate | server CPU per connect | closed during hold |",
            "|---|---|---|---|---|---|---|---|"]
    for scen, comp in [("conns", "off (default)"), ("conns-deflate", "`--websocket-compression`, 2 KiB exchanged each way first")]:
        for b in ["base", "head"]:
            r = load(os.path.join(BOUNDS, f"{scen}-{b}.json"))
            if not r:
                rows.append(f"| {BOUNDS_BIN[b]} | failed ||||||| ")
                continue
            s, x = r.get("server") or {}, r.get("extra") or {}
            cb = x.get("deflate_answers_compressed")
            rows.append(f"| {BOUNDS_BIN[b]} | {r['received']:,} of {r['expected']:,} | {comp} | {s.get('rss_per_connection', 0) / 1024:.1f} KiB "
                        f"| {f'{cb:,}' if cb is not None else DASH} | {x.get('connect_rate', 0):,.0f}/s | {s.get('cpu_us_per_connect', 0):.1f} µs "
                        f"| {x.get('closed_during_hold', DASH)} |")
    return "\n".join(rows)


def bounds_hostile_table():
    """(B) Peak server RSS growth per byte sent, per finding, before and after."""
    res = {}
    for b in ["base", "head"]:
        r = load(os.path.join(BOUNDS, f"hostile-{b}.json"))
        res[b] = {x["finding"]: x for x in (r or {}).get("results", [])}
    keys = [k for k in res["head"] or res["base"]] or list(res["base"])
    rows = ["| finding | hostile input | before: sent → peak RSS growth | before: growth ÷ sent | after: sent → peak RSS growth | after: growth ÷ sent | bystander served (before / after) |",
            "|---|---|---|---|---|---|---|"]

    def cell(x):
        if not x:
            return DASH, DASH
        mib = x["rss_growth"] / (1 << 20)
        r = x["ratio"]
        ratio = DASH if r is None else f"{r:,.0f}" if r >= 100 else f"{r:.2f}"
        if x.get("capped"):
            ratio = f"≥ {ratio} (stopped at the 2 GiB cap)"
        return f"{x['sent'] / 1e6:,.2f} MB → {mib:,.1f} MiB", ratio

    worst = {b: max(res[b].values(), key=lambda x: x["ratio"] or 0, default=None) for b in res}
    for k in keys:
        a, h = res["base"].get(k), res["head"].get(k)
        what = (h or a)["what"]
        (sa, ra), (sh, rh) = cell(a), cell(h)
        if worst["base"] is a and a:
            ra = f"**{ra}** (worst)"
        if worst["head"] is h and h:
            rh = f"**{rh}** (worst)"
        by = " / ".join(("yes" if x["bystander_ok"] and x["server_alive"] else "**no**") if x else DASH for x in (a, h))
        rows.append(f"| {k} | {what} | {sa} | {ra} | {sh} | {rh} | {by} |")
    return "\n".join(rows)


def bounds_load_table():
    """(C) fanout and echo, before and after, with the floor ratio."""
    fw = bounds_floor()
    rows = ["| scenario | binary | rate/s | loss | p50 ms | p99 ms | server CPU µs/unit | ÷ floor | server RSS/conn KiB | load generator CPU µs/unit |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for scen, label in [("fanout-1k", "fanout 1,000 × 100/s"), ("fanout-10k", "fanout 10,000 × 10/s"), ("echo", "echo 100 clients")]:
        for b in ["base", "head"]:
            r = load(os.path.join(BOUNDS, f"{scen}-{b}.json"))
            if not r:
                rows.append(f"| {label} | {BOUNDS_BIN[b]} | failed ||||||||")
                continue
            s, lat = r.get("server") or {}, r["latency_us"]
            unit = s.get("cpu_us_per_delivery")
            fl = ratio(unit, fw) if scen.startswith("fanout") else DASH
            rss = f"{s.get('rss_per_connection', 0) / 1024:.1f}" if scen == "fanout-10k" else DASH
            rows.append(f"| {label} | {BOUNDS_BIN[b]} | {r['rate']:,.0f} | {r['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} "
                        f"| {unit or 0:.2f} | {fl} | {rss} | {r['loadgen_cpu_us_per_delivery']:.2f} |")
    return "\n".join(rows)


RECOVERY = os.path.join(RES, "recovery")


def recovery_table():
    """Fanout with connection state recovery off and on (bench/run-recovery.sh), per round."""
    try:
        t = open(os.path.join(RECOVERY, "floor.txt")).read()
        fw = float(re.search(r"plain write\s*: ([\d.]+)", t).group(1))
    except (OSError, AttributeError):
        fw = None
    rows = [f"Kernel floor of this run (`floor 1000 300`): {fw:.2f} µs per delivery." if fw else "Kernel floor: —", "",
            "| scenario | recovery | round | deliveries | loss | p50 ms | p99 ms | server CPU µs/delivery | ÷ floor | on ÷ off (same round) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for scen, label in [("fanout-1k", "fanout 1,000 × 100/s"), ("fanout-10k", "fanout 10,000 × 10/s")]:
        rnd = 1
        while os.path.exists(os.path.join(RECOVERY, f"{scen}-off-{rnd}.json")):
            base = None
            for mode in ["off", "on"]:
                r = load(os.path.join(RECOVERY, f"{scen}-{mode}-{rnd}.json"))
                if not r:
                    rows.append(f"| {label} | {mode} | {rnd} | failed |||||||")
                    continue
                s, lat = r.get("server") or {}, r["latency_us"]
                unit = s.get("cpu_us_per_delivery")
                base = unit if mode == "off" else base
                rows.append(f"| {label} | {mode} | {rnd} | {r['received']:,} | {r['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} "
                            f"| {unit or 0:.2f} | {ratio(unit, fw) if fw else DASH} | {ratio(unit, base) if mode == 'on' else DASH} |")
            rnd += 1
    return "\n".join(rows)


def bounds_floor_line():
    fw = bounds_floor()
    return f"**{fw:.2f} µs**" if fw else DASH


CLUSTER = os.path.join(RES, "cluster")
CLUSTER_ROWS = [
    ("one-base-r1", "one shardcast node (--threads 2), before the adapter seam", 1),
    ("one-head-r1", "one shardcast node (--threads 2), this commit, no --redis", 1),
    ("one-base-r2", "one shardcast node, before the seam (2nd round)", 1),
    ("one-head-r2", "one shardcast node, this commit (2nd round)", 1),
    ("two-shardcast", "two shardcast nodes (--threads 1 each) through Redis", 2),
    ("two-node", "two Node socket.io 4.8 nodes with @socket.io/redis-adapter", 2),
    ("one-node", "one Node socket.io 4.8 node", 1),
]


def cluster_table():
    """Fanout across a cluster (bench/run-cluster.sh): p50/p99 against one shardcast node."""
    base = load(os.path.join(CLUSTER, "one-head-r1.json"))
    rows = ["| setup | nodes | deliveries/s | loss | p50 ms | p99 ms | p99 ÷ one shardcast node | server CPU µs/delivery |",
            "|---|---|---|---|---|---|---|---|"]
    for name, label, nodes in CLUSTER_ROWS:
        r = load(os.path.join(CLUSTER, f"{name}.json"))
        if not r:
            continue
        lat = r["latency_us"]
        cpu = (r.get("server") or {}).get("cpu_us_per_delivery") if nodes == 1 else None
        rel = ratio(lat["p99"], base["latency_us"]["p99"]) if base else DASH
        rows.append(f"| {label} | {nodes} | {r['rate']:,.0f} | {r['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | {rel} "
                    f"| {f'{cpu:.2f}' if cpu else DASH} |")
    return "\n".join(rows)


CLUSTER_MODES = [
    ("one-head-r1", "one shardcast node (--threads 2), no --redis", 1),
    ("two-shardcast", "two shardcast nodes through Redis (Node format)", 2),
    ("two-shardcast-sharded", "two shardcast nodes, --redis-sharded", 2),
    ("two-shardcast-bridge", "two shardcast nodes, --redis-format bridge", 2),
    ("two-node", "two Node socket.io 4.8 nodes with @socket.io/redis-adapter", 2),
]


def cluster_modes_table():
    """The cluster's modes (bench/run-cluster.sh, two runs: bench/results/cluster/modes, modes2):
    p50/p99 of each against one shardcast node of the same run."""
    rows = ["| run | setup | nodes | deliveries/s | loss | p50 ms | p99 ms | p99 ÷ one node (same run) |",
            "|---|---|---|---|---|---|---|---|"]
    for run, d in [("1", "modes"), ("2", "modes2")]:
        base = load(os.path.join(CLUSTER, d, "one-head-r1.json"))
        for name, label, nodes in CLUSTER_MODES:
            r = load(os.path.join(CLUSTER, d, f"{name}.json"))
            if not r:
                continue
            lat = r["latency_us"]
            rel = ratio(lat["p99"], base["latency_us"]["p99"]) if base else DASH
            rows.append(f"| {run} | {label} | {nodes} | {r['rate']:,.0f} | {r['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | {rel} |")
    return "\n".join(rows)


def cluster_single_table():
    """The seam off: one node, this commit against the binary from before it, alternating rounds
    (bench/results/cluster and bench/results/cluster/single)."""
    rows = ["| round | binary | loss | p50 ms | p99 ms | server CPU µs/delivery |", "|---|---|---|---|---|---|"]
    cpu = {"base": [], "head": []}
    for d, tag in [(CLUSTER, "A"), (os.path.join(CLUSTER, "single"), "B")]:
        for i in range(1, 10):
            for b, label in [("base", "before the seam"), ("head", "this commit")]:
                r = load(os.path.join(d, f"one-{b}-r{i}.json"))
                if not r:
                    continue
                c = (r.get("server") or {}).get("cpu_us_per_delivery")
                cpu[b].append(c)
                lat = r["latency_us"]
                rows.append(f"| {tag}{i} | {label} | {r['loss'] * 100:.2f}% | {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | {c:.2f} |")

    def median(v):
        v = sorted(x for x in v if x)
        return (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2 if v else None

    mb, mh = median(cpu["base"]), median(cpu["head"])
    if mb and mh:
        rows.append(f"| median of {len(cpu['base'])} rounds | this commit ÷ before | | | | {ratio(mh, mb)} ({mh:.2f} / {mb:.2f}) |")
    return "\n".join(rows)


METRICS_BIN = {"base": "before the counters (main)", "head": "with counters, `--admin-bind`, not scraped", "scraped": "with counters, `/metrics` scraped every second"}


def metrics_table():
    """Admin endpoint: fanout 1,000 × 100/s, the binary before the counters, with them, and
    scraped every second; alternating rounds of one run (bench/run-metrics.sh)."""
    try:
        fw = float(re.search(r"plain write\s*: ([\d.]+)", open(os.path.join(METRICS, "floor.txt")).read()).group(1))
    except (OSError, AttributeError):
        fw = None
    runs = {b: [r for r in (load(p) for p in sorted(glob.glob(os.path.join(METRICS, f"fanout-{b}-*.json")))) if r] for b in METRICS_BIN}
    if not runs["head"]:
        return DASH
    mean = lambda xs: sum(xs) / len(xs)
    head = statistics.median([r["server"]["cpu_us_per_delivery"] for r in runs["head"]])
    scrapes = [l.split() for p in glob.glob(os.path.join(METRICS, "scrapes-*.log")) for l in open(p)]
    ok = [x for x in scrapes if x[0] == "200"]
    rows = ["| binary | rounds | rate/s | loss | p50 ms | p99 ms | server CPU µs/delivery, each round | median | ÷ not scraped | ÷ floor |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for b, label in METRICS_BIN.items():
        rs = runs[b]
        if not rs:
            continue
        cpu = [r["server"]["cpu_us_per_delivery"] for r in rs]
        m = statistics.median(cpu)
        rows.append(f"| {label} | {len(rs)} | {mean([r['rate'] for r in rs]):,.0f} | {max(r['loss'] for r in rs) * 100:.2f}% "
                    f"| {mean([r['latency_us']['p50'] for r in rs]) / 1000:.2f} | {mean([r['latency_us']['p99'] for r in rs]) / 1000:.2f} "
                    f"| {' / '.join(f'{c:.2f}' for c in cpu)} | {m:.2f} | {m / head:.3f}× | {ratio(m, fw) if fw else DASH} |")
    size = f", {mean([int(x[1]) for x in ok]):,.0f} bytes each" if ok else ""
    rows.append("")
    rows.append(f"Floor (`floor 1000 300`, plain `write(2)`): {f'**{fw:.2f} µs**' if fw else DASH} per delivery. "
                f"Scrapes answered 200 during the scraped runs: {len(ok)} of {len(scrapes)}{size}.")
    for n in (1000, 10000):
        try:
            rows.append("")
            rows.append("One scrape, " + open(os.path.join(METRICS, f"scrape-cost-{n}.txt")).read().strip())
        except OSError:
            rows.pop()
    return "\n".join(rows)


def main():
    if sys.argv[1:] == ["metrics"]:
        print(metrics_table())
        return
    tpl = open(os.path.join(ROOT, "bench", "benchmarks.md.in")).read()
    stamp = os.environ.get("BENCH_DATE") or time.strftime("%Y-%m-%d")
    fills = {
        "date": stamp, "machine": machine(), "mask": mask_table(), "codec": codec_table(), "broadcast": broadcast_table(),
        "echo_peers": echo_peers_table(), "soak": soak_table(), "floor": floor_line(),
        "compare_t1": compare_table(1), "compare_t2": compare_table(2),
        "saturation_t1": saturation_table(1), "saturation_t2": saturation_table(2), "targets": targets_table(), "sendzc": sendzc(),
        "bounds_idle": bounds_idle_table(), "bounds_hostile": bounds_hostile_table(), "bounds_load": bounds_load_table(),
        "bounds_floor": bounds_floor_line(), "recovery_load": recovery_table(), "metrics": metrics_table(), "cluster": cluster_table(),
        "cluster_single": cluster_single_table(), "cluster_modes": cluster_modes_table(),
    }
    out = re.sub(r"\{\{(\w+)\}\}", lambda m: fills[m.group(1)], tpl)
    # RENDER_OUT: write elsewhere (e.g. to take one section without the criterion results).
    dest = os.environ.get("RENDER_OUT") or os.path.join(ROOT, "docs", "benchmarks.md")
    open(dest, "w").write(out)
    print(f"wrote {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
