#!/usr/bin/env python3
"""Compare the JSON lines a Forward receiver printed with the JSONL fixture
that was sent.

Usage:
    python3 verify_records.py EXPECTED.jsonl ACTUAL.out [--meta]
        [--time-field F | --int-time-field F] [--any-order] [--times N]

ACTUAL.out may start with a `LISTENING <port>` line (fluent-server.js),
which is skipped. Records are matched by `auditID`: every expected record
must arrive exactly N times (default 1) and be equal as parsed JSON; nothing
else may arrive. Unless --any-order, the order must match too (for N > 1:
the fixture repeated N times).

--meta: lines are {"tag","time","record"} (fluent-server.js --meta); the tag
must be `audit`. --time-field F: time must be {"epoch","nano"} equal to
the record's RFC 3339 field F to the nanosecond. --int-time-field F: time must
be the integer seconds of field F.
Prints `OK <n> records` or the differences; exit 0 / 1.
"""

import argparse
import calendar
import json
import re
import sys

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339_ns(value):
    """Same parser as fluent_sender.py (kept here so that this script needs
    nothing beyond the standard library)."""
    m = RFC3339.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    y, mo, d, h, mi, s = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    tz = m.group(8)
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return secs * 10**9 + int((m.group(7) or "").ljust(9, "0"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("expected")
    ap.add_argument("actual")
    ap.add_argument("--meta", action="store_true")
    ap.add_argument("--time-field")
    ap.add_argument("--int-time-field")
    ap.add_argument("--any-order", action="store_true")
    ap.add_argument("--times", type=int, default=1)
    ap.add_argument("--tag", default="audit")
    a = ap.parse_args()

    with open(a.expected, encoding="utf-8") as f:
        expected = [json.loads(l) for l in f if l.strip()]
    errors = []
    actual = []
    times = []
    with open(a.actual, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if n == 1 and line.startswith("LISTENING "):
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                errors.append(f"line {n}: not JSON ({e}): {line[:200]!r}")
                continue
            if a.meta:
                if obj.get("tag") != a.tag:
                    errors.append(f"line {n}: tag {obj.get('tag')!r} != {a.tag!r}")
                times.append(obj.get("time"))
                obj = obj.get("record")
            actual.append(obj)

    by_id = {}
    for r in expected:
        by_id[r["auditID"]] = r
    if len(by_id) != len(expected):
        errors.append("fixture has duplicate auditIDs")

    want = expected * a.times
    if len(actual) != len(want):
        errors.append(f"got {len(actual)} records, want {len(want)}")
    counts = {}
    for i, r in enumerate(actual):
        aid = r.get("auditID") if isinstance(r, dict) else None
        if aid not in by_id:
            errors.append(f"record {i + 1}: unexpected auditID {aid!r}: {json.dumps(r)[:300]}")
            continue
        counts[aid] = counts.get(aid, 0) + 1
        if r != by_id[aid]:
            errors.append(f"record {i + 1} ({aid}) differs:\n  want {json.dumps(by_id[aid], ensure_ascii=False)[:600]}\n  got  {json.dumps(r, ensure_ascii=False)[:600]}")
        if a.time_field or a.int_time_field:
            t = times[i]
            ns = parse_rfc3339_ns(by_id[aid].get(a.time_field or a.int_time_field))
            if a.time_field:
                want_t = {"epoch": ns // 10**9, "nano": ns % 10**9}
            else:
                want_t = ns // 10**9
            if t != want_t:
                errors.append(f"record {i + 1} ({aid}): time {t!r} != {want_t!r}")
    for aid in by_id:
        if counts.get(aid, 0) != a.times:
            errors.append(f"auditID {aid}: received {counts.get(aid, 0)} times, want {a.times}")
    if not a.any_order and len(actual) == len(want):
        got_order = [r.get("auditID") if isinstance(r, dict) else None for r in actual]
        if got_order != [r["auditID"] for r in want]:
            errors.append("records arrived in a different order than sent")

    if errors:
        for e in errors[:30]:
            print(e)
        if len(errors) > 30:
            print(f"... and {len(errors) - 30} more")
        return 1
    print(f"OK {len(actual)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
