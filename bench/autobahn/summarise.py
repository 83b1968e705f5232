#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite fuzzingclient index.json (one or more, merged).

Prints a Markdown table of behaviour counts per top-level case group, then every case that is
not OK (NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, then FAILED) with its description and
the result and close result from the per-case JSON next to the index.
"""
import json
import os
import sys
from collections import Counter, defaultdict

KINDS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def first_line(text):
    return text.strip().split("<br>")[0].strip()


def key(case_id):
    return tuple(int(p) for p in case_id.split("."))


def main(paths):
    cases = {}
    for path in paths:
        with open(path) as f:
            index = json.load(f)
        for agent, results in index.items():
            for cid, r in results.items():
                cases[(agent, cid)] = (r, os.path.dirname(path))
    groups = defaultdict(Counter)
    failed = []
    other_cases = []
    for (agent, cid), (r, base) in sorted(cases.items(), key=lambda kv: (kv[0][0], key(kv[0][1]))):
        group = cid.split(".")[0]
        b = r["behavior"]
        groups[group][b] += 1
        if b == "FAILED" or r.get("behaviorClose") == "FAILED":
            failed.append((agent, cid, r, base))
        elif b != "OK" or r.get("behaviorClose") not in ("OK", "INFORMATIONAL"):
            other_cases.append((agent, cid, r, base))
    print("| Group | Cases | " + " | ".join(KINDS) + " |")
    print("|---|---:|" + "---:|" * len(KINDS))
    total = Counter()
    for g in sorted(groups, key=int):
        c = groups[g]
        total.update(c)
        print("| %s.* | %d | %s |" % (g, sum(c.values()), " | ".join(str(c[k]) for k in KINDS)))
    print("| **all** | **%d** | %s |" % (sum(total.values()), " | ".join("**%d**" % total[k] for k in KINDS)))
    other = set(total) - set(KINDS)
    if other:
        print("\nOther behaviours: %s" % dict((k, total[k]) for k in other))
    for title, rows in (("Cases neither OK nor FAILED", other_cases), ("FAILED cases", failed)):
        print("\n%s: %d" % (title, len(rows)))
        for row in rows:
            show(*row)


def show(agent, cid, r, base):
    detail = {}
    rf = os.path.join(base, r.get("reportfile", ""))
    if r.get("reportfile") and os.path.exists(rf):
        with open(rf) as f:
            detail = json.load(f)
    print("\n- **%s** (behavior %s, close %s, %s ms): %s" % (
        cid, r["behavior"], r.get("behaviorClose"), r.get("duration"),
        first_line(detail.get("description", ""))))
    if not detail:
        return  # the per-case JSON is not there (index.json alone, as committed)
    print("  - result: %s" % detail.get("result", "?"))
    print("  - close: %s" % detail.get("resultClose", "?"))
    print("  - expected: %s; observed: %s" % (
        json.dumps(detail.get("expected"))[:300], json.dumps(detail.get("received"))[:300]))


if __name__ == "__main__":
    main(sys.argv[1:])
