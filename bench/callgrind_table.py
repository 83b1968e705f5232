#!/usr/bin/env python3
"""The table of bench/run-callgrind.sh: instructions (Ir) per delivery of binaries a and b,
raw and corrected for the worker-loop passes (counted as calls to `Shard::next_deadline`,
once per pass; the Ir of one pass is the slope between the two zero-message runs)."""
import collections, json, os, re, sys

OUT = sys.argv[1]


def parse(path):
    """Total Ir, and calls per callee name, from a raw callgrind file."""
    names, calls, total, callee = {}, collections.Counter(), 0, None
    for line in open(path):
        if line.startswith("totals:"):
            total = int(line.split()[1])
        elif line.startswith("cfn="):
            m = re.match(r"\((\d+)\)(?:\s+(.*))?", line[4:].strip())
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
            callee = names.get(m.group(1)) if m else line[4:].strip()
        elif line.startswith("fn="):
            m = re.match(r"\((\d+)\)(?:\s+(.*))?", line[3:].strip())
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
        elif line.startswith("calls=") and callee:
            calls[callee] += int(line[6:].split()[0])
    return total, calls


def passes(calls):
    return sum(n for name, n in calls.items() if name.endswith("::next_deadline") and "Shard" in name)


def deliveries(scen, name):
    if scen == "echo":
        return json.loads(open(f"{OUT}/{name}.txt").read().strip().splitlines()[-1])["round_trips"]
    return json.load(open(f"{OUT}/{name}.json"))["received"]


def runs(scen, w, rnd):
    load, zero = (parse(f"{OUT}/{scen}-{w}-{m}-{rnd}.cg.1") for m in ("load", "zero"))
    return load, zero, deliveries(scen, f"{scen}-{w}-load-{rnd}")


print("| scenario | binary | round | Ir (load) | Ir (zero) | deliveries | passes (load, zero) | Ir per delivery | pass-corrected | b / a (corrected) |")
print("|---|---|---|---|---|---|---|---|---|---|")
slope = {}
for w in ("a", "b"):
    (t1, c1), (t2, c2) = (parse(f"{OUT}/fanout-1k-{w}-zero-{r}.cg.1") for r in (1, 2))
    slope[w] = (t2 - t1) / (passes(c2) - passes(c1)) if passes(c2) != passes(c1) else 0.0
for scen in ("fanout-1k", "echo"):
    for rnd in (1, 2):
        per = {}
        rows = []
        for w in ("a", "b"):
            (lt, lc), (zt, zc), n = runs(scen, w, rnd)
            pl, pz = passes(lc), passes(zc)
            raw = (lt - zt) / n
            per[w] = (lt - zt - slope[w] * (pl - pz)) / n
            rows.append((w, lt, zt, n, pl, pz, raw))
        for w, lt, zt, n, pl, pz, raw in rows:
            ratio = f"{per['b'] / per['a']:.3f}" if w == "b" else ""
            print(f"| {scen} | {w} | {rnd} | {lt:,} | {zt:,} | {n:,} | {pl:,}, {pz:,} | {raw:,.1f} | {per[w]:,.1f} | {ratio} |")
print(f"\nIr per loop pass (slope of the two fanout-1k zero runs): a {slope['a']:.0f}, b {slope['b']:.0f}")
