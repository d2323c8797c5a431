#!/usr/bin/env python3
"""Result lines and the final table of kind/netns/run.sh.

report.py TMP line S            the RESULT line(s) of scenario S
report.py TMP table TOTAL S...  the final table
report.py TMP why RESULT.json   why events are missing, when it is clear

Reads TMP/sS/status (PASS or FAIL: why), TMP/sS/seconds and the
audit-check.py summaries TMP/sS/result-*.json (label "sS/<output>-final" for
the check after everything stopped, "sS/wait" or "sS/<output>" for the wait).
"""

import glob
import json
import os
import sys

TITLES = {
    "1": "direct TLS+key+WASM",
    "2": "konnectivity UDS",
    "3": "mTLS CONNECT proxy",
    "4": "two outputs",
    "5": "receiver down",
}


def status(tmp, s):
    f = os.path.join(tmp, f"s{s}", "status")
    return open(f).read().strip() if os.path.exists(f) else "FAIL: no status"


def secs(tmp, s):
    f = os.path.join(tmp, f"s{s}", "seconds")
    return open(f).read().strip() if os.path.exists(f) else "-"


def results(tmp, s):
    """(output, summary) per output: the final check, else the last check that ran."""
    by_out = {}
    for f in sorted(glob.glob(os.path.join(tmp, f"s{s}", "result-*.json"))):
        r = json.load(open(f))
        tag = r["label"].split("/", 1)[1]
        final = tag.endswith("final")
        out = tag.replace("-final", "").replace("final", "").replace("wait", "") or "cluster"
        if final or out not in by_out:
            by_out[out] = r
    return sorted(by_out.items())


def verdict(tmp, s):
    return "PASS" if status(tmp, s) == "PASS" else "FAIL"


def line(tmp, s):
    for out, r in results(tmp, s):
        print(f"RESULT scenario {s} ({TITLES[s]}, {out}): written={r['written']} expected={r['expected']} "
              f"received={r['received']} missing={r['missing']} duplicates={r['duplicates']} "
              f"unexpected={r['unexpected']} -> {verdict(tmp, s)} ({secs(tmp, s)}s)")
    if status(tmp, s) != "PASS":
        print(f"RESULT scenario {s} ({TITLES[s]}): {status(tmp, s)}")


def table(tmp, total, scen):
    hdr = ("#", "scenario", "output", "written", "expected", "received", "distinct", "missing", "dups",
           "unexpected", "result", "secs")
    rows = []
    for s in scen:
        res = results(tmp, s)
        if not res:
            rows.append((s, TITLES[s], "-", "-", "-", "-", "-", "-", "-", "-", verdict(tmp, s), secs(tmp, s)))
        for out, r in res:
            rows.append((s, TITLES[s], out, r["written"], r["expected"], r["received"], r["distinct"], r["missing"],
                         r["duplicates"], r["unexpected"], verdict(tmp, s), secs(tmp, s)))
    w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]

    def fmt(r):
        return "  ".join(str(x).rjust(n) if isinstance(x, int) else str(x).ljust(n) for x, n in zip(r, w)).rstrip()

    print(fmt(hdr))
    print("  ".join("-" * n for n in w))
    for r in rows:
        print(fmt(r))
    fails = [s for s in scen if status(tmp, s) != "PASS"]
    for s in fails:
        print(f"scenario {s}: {status(tmp, s)}")
    for s in scen:
        f = os.path.join(tmp, f"s{s}", "notes")
        if os.path.exists(f):
            for n in open(f).read().splitlines():
                print(f"note: {n}")
    print(f"total {total}s: {len(scen) - len(fails)} of {len(scen)} scenarios passed")


def why(path):
    """Every missing event was in rotated files that were skipped as a whole."""
    r = json.load(open(path))
    if r["missing"] and r["missing"] == r.get("missing_in_whole_files"):
        print(f"{r['missing']} missing events = {r['missing_whole_files']} whole rotated file(s) the forwarder "
              "never read: the rotation race in kind/netns/README.md")


if __name__ == "__main__":
    tmp, mode = sys.argv[1], sys.argv[2]
    if mode == "why":
        why(sys.argv[3])
    elif mode == "line":
        line(tmp, sys.argv[3])
    else:
        table(tmp, sys.argv[3], sys.argv[4:])
