#!/usr/bin/env python3
"""Checks what a receiver got against what an audit log writer wrote.

written   the auditIDs written: the manifests of scripts/audit-writer.py
          (--written, one ID per line), or else every event of --audit-log
expected  the subset that should arrive: all written events, or those the
          audit Policy keeps (--policy: `audit-forwarder policy eval` over
          the --audit-log files), or those a command keeps (--expect-cmd)
received  the receiver's output (--received: JSON lines with `auditID`)

Events are identified by their auditID, plus "/<stage>" for stages other
than ResponseComplete (one request can be logged at RequestReceived and at
ResponseComplete under the same auditID).

Prints written, expected, received (lines), distinct, missing (expected, not
received), duplicates (received lines beyond the first per ID), unexpected
(received, not expected: dropped by the policy, never written, or a line
without auditID) and, when asked, events failing --require-field or the level
check. Exit status 1 when missing > 0, unexpected > 0, a required field is
absent or wrong, a level check fails, or duplicates > --max-duplicates;
2 on a usage or input error.

--wait SECONDS polls the receiver output (incrementally) until every expected
event arrived or the time is up, then reports: no sleep-based synchronisation.
"""

import argparse
import glob
import gzip
import json
import os
import subprocess
import sys
import threading
import time

LEVELS = {"None": 0, "Metadata": 1, "Request": 2, "RequestResponse": 3}


def die(msg):
    print(f"audit-check: {msg}", file=sys.stderr)
    sys.exit(2)


def expand(patterns, must_exist=True):
    out = []
    for p in patterns:
        g = sorted(glob.glob(p))
        if g:
            out.extend(g)
        elif must_exist:
            die(f"no file matches {p!r}")
        else:
            out.append(p)  # may appear later (receiver output)
    return out


def audit_files(patterns):
    """Audit log files, rotated (by name: timestamp order) before the live one."""
    files = expand(patterns)
    return sorted(files, key=lambda f: (os.path.basename(f).split(".")[0] == "audit", f))


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line in f:
            if line.strip():
                yield line


def read_ids(paths):
    ids = []
    for p in expand(paths):
        with open(p) as f:
            ids.extend(line.strip() for line in f if line.strip())
    return ids


def event_key(rec):
    """The auditID, plus "/<stage>" for stages other than ResponseComplete
    (the keys scripts/audit-writer.py writes to its manifest)."""
    aid = rec.get("auditID")
    if not isinstance(aid, str):
        return None
    stage = rec.get("stage", "ResponseComplete")
    return aid if stage == "ResponseComplete" else f"{aid}/{stage}"


def get_path(obj, dotted):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return KeyError
        cur = cur[part]
    return cur


class Received:
    """Incremental reader of the receiver's output files."""

    def __init__(self, paths, need_full):
        self.paths = paths
        self.pos = {p: 0 for p in paths}
        self.rest = {p: b"" for p in paths}
        self.need_full = need_full  # parse every record (field / level checks)
        self.lines = 0
        self.counts = {}
        self.no_id = 0
        self.records = {}  # auditID -> first record (only when need_full)

    def poll(self):
        for p in self.paths:
            try:
                with open(p, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size < self.pos[p]:
                        die(f"{p} shrank (truncated or rotated): cannot check it incrementally")
                    f.seek(self.pos[p])
                    data = f.read()
            except FileNotFoundError:
                continue
            self.pos[p] += len(data)
            data = self.rest[p] + data
            cut = data.rfind(b"\n") + 1
            self.rest[p] = data[cut:]
            for line in data[:cut].split(b"\n"):
                if line.strip():
                    self._line(line)

    def _line(self, line):
        self.lines += 1
        try:
            rec = json.loads(line)
            aid = event_key(rec) if isinstance(rec, dict) else None
        except ValueError:
            rec, aid = None, None
        if not isinstance(aid, str):
            self.no_id += 1
            return
        n = self.counts.get(aid, 0)
        self.counts[aid] = n + 1
        if n == 0 and self.need_full:
            self.records[aid] = rec


def policy_decisions(af_bin, policy, files):
    """auditID -> (action, level, omitManagedFields) from `policy eval`."""
    cmd = [af_bin, "policy", "eval", "--policy", policy]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = {}

    def feed():
        try:
            for f in files:
                for line in read_lines(f):
                    proc.stdin.write(line if line.endswith(b"\n") else line + b"\n")
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    for line in proc.stdout:
        d = json.loads(line)
        out[event_key(d)] = (d["action"], d["level"], bool(d.get("omitManagedFields")))
    err = proc.stderr.read().decode(errors="replace")
    t.join()
    if proc.wait() != 0:
        die(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()}")
    return out


def expect_cmd_ids(cmd, files):
    """IDs a command keeps: it reads the audit events on stdin and prints, one
    per line, either a bare event key (kept) or a JSON object with auditID,
    stage and action (an action starting with "drop" = not kept), which is
    what `audit-forwarder policy eval` prints."""
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for f in files for line in read_lines(f))
    r = subprocess.run(cmd, shell=True, input=data, capture_output=True)
    if r.returncode != 0:
        die(f"--expect-cmd {cmd!r} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    kept = set()
    for line in r.stdout.decode().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            d = json.loads(line)
            if not str(d.get("action", "")).startswith("drop"):
                kept.add(d["auditID"])
        else:
            kept.add(line)
    return kept


def check_record(rec, decision):
    """Problems with how the policy decision was applied to one event."""
    action, level, omit_mf = decision
    probs = []
    if rec.get("level") != level:
        probs.append(f"level {rec.get('level')!r}, policy says {level!r}")
    lv = LEVELS.get(level, 0)
    if lv < LEVELS["Request"] and "requestObject" in rec:
        probs.append("requestObject present below level Request")
    if lv < LEVELS["RequestResponse"] and "responseObject" in rec:
        probs.append("responseObject present below level RequestResponse")
    if omit_mf:
        bodies = []
        if rec.get("verb") != "patch":
            bodies.append(rec.get("requestObject"))
        resp = rec.get("responseObject")
        bodies.append(resp)
        if isinstance(resp, dict) and isinstance(resp.get("items"), list):
            bodies.extend(resp["items"])
        for b in bodies:
            if isinstance(b, dict) and isinstance(b.get("metadata"), dict) and "managedFields" in b["metadata"]:
                probs.append("managedFields present although omitManagedFields")
                break
    return probs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--written", action="append", default=[], help="ID manifest(s) of audit-writer.py (globs ok)")
    p.add_argument("--audit-log", action="append", default=[], help="audit log file(s), plain or .gz (globs ok)")
    p.add_argument("--received", action="append", default=[], required=True, help="receiver output file(s) (globs ok)")
    p.add_argument("--policy", help="expected = what this policy (preset or file) keeps, per `audit-forwarder policy eval`")
    p.add_argument("--check-level", action="store_true",
                   help="with --policy: each received event has the policy's output level, no body above it, no managedFields if omitted")
    p.add_argument("--expect-cmd", help="expected = what this shell command keeps (audit events on its stdin)")
    p.add_argument("--af-bin", default=os.environ.get("AF_BIN", "target/debug/audit-forwarder"))
    p.add_argument("--require-field", action="append", default=[], metavar="KEY=VALUE",
                   help="every received event has this (dotted) field with this value (JSON or string)")
    p.add_argument("--max-duplicates", type=int, default=-1, help="fail above this many duplicates (-1: only report)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="poll until every expected event was received or this many seconds passed (max 600)")
    p.add_argument("--label", default="check")
    p.add_argument("--json", help="also write the summary as JSON to this file")
    p.add_argument("--show", type=int, default=5, help="list up to this many missing/unexpected IDs")
    a = p.parse_args()
    if not a.written and not a.audit_log:
        die("give --written and/or --audit-log")
    if a.policy and a.expect_cmd:
        die("--policy and --expect-cmd exclude each other")
    if (a.policy or a.expect_cmd) and not a.audit_log:
        die("--policy / --expect-cmd need --audit-log (the events themselves)")
    if a.check_level and not a.policy:
        die("--check-level needs --policy")
    if not 0 <= a.wait <= 600:
        die("--wait must be within 0..600 seconds")

    required = []
    for kv in a.require_field:
        k, sep, v = kv.partition("=")
        if not sep:
            die(f"--require-field {kv!r}: expected KEY=VALUE")
        try:
            v = json.loads(v)
        except ValueError:
            pass
        required.append((k, v))

    files = audit_files(a.audit_log) if a.audit_log else []
    if a.written:
        written = read_ids(a.written)
    else:
        written = [event_key(json.loads(line)) for f in files for line in read_lines(f)]
    written_set = set(written)
    if len(written_set) != len(written):
        die(f"the written IDs are not unique ({len(written) - len(written_set)} repeated)")

    decisions = None
    if a.policy:
        decisions = policy_decisions(a.af_bin, a.policy, files)
        unknown = written_set - decisions.keys()
        if unknown:
            die(f"{len(unknown)} written events are not in the audit files (deleted?): cannot evaluate the policy for them, e.g. {sorted(unknown)[:3]}")
        expected = {i for i in written_set if not decisions[i][0].startswith("drop")}
    elif a.expect_cmd:
        kept = expect_cmd_ids(a.expect_cmd, files)
        expected = kept & written_set
    else:
        expected = written_set

    rcv = Received(expand(a.received, must_exist=False), need_full=bool(required or a.check_level))
    deadline = time.monotonic() + a.wait
    while True:
        rcv.poll()
        missing = len(expected - rcv.counts.keys())
        if missing == 0 or time.monotonic() >= deadline:
            break
        time.sleep(0.2)

    got = rcv.counts.keys()
    missing_ids = sorted(expected - got)
    unexpected_ids = sorted(got - expected)
    duplicates = rcv.lines - rcv.no_id - len(got)
    field_bad = []
    level_bad = []
    if rcv.need_full:
        for aid, rec in rcv.records.items():
            for k, v in required:
                if get_path(rec, k) != v:
                    field_bad.append((aid, f"{k}={get_path(rec, k) if get_path(rec, k) is not KeyError else '<absent>'}"))
                    break
            if a.check_level and aid in expected:
                probs = check_record(rec, decisions[aid])
                if probs:
                    level_bad.append((aid, "; ".join(probs)))

    # where the missing events were written: whole rotated files missing point
    # at the reader having skipped a file
    missing_where = []
    if missing_ids and files:
        missing_set = set(missing_ids)
        for f in files:
            n = m = 0
            for line in read_lines(f):
                n += 1
                try:
                    if event_key(json.loads(line)) in missing_set:
                        m += 1
                except ValueError:
                    pass
            if m:
                missing_where.append((f, m, n))
    whole = [(f, m) for f, m, n in missing_where if m == n]

    summary = {
        "label": a.label,
        "written": len(written_set),
        "expected": len(expected),
        "received": rcv.lines,
        "distinct": len(got),
        "missing": len(missing_ids),
        "duplicates": duplicates,
        "unexpected": len(unexpected_ids) + rcv.no_id,
        "no_auditid": rcv.no_id,
        "field_bad": len(field_bad),
        "level_bad": len(level_bad),
        "missing_whole_files": len(whole),
        "missing_in_whole_files": sum(m for _, m in whole),
    }
    failed = []
    if summary["missing"]:
        failed.append("missing")
    if summary["unexpected"]:
        failed.append("unexpected")
    if field_bad:
        failed.append("required field")
    if level_bad:
        failed.append("policy level")
    if a.max_duplicates >= 0 and duplicates > a.max_duplicates:
        failed.append("duplicates")
    summary["ok"] = not failed
    summary["failed"] = failed

    print(f"[{a.label}] written={summary['written']} expected={summary['expected']} received={summary['received']} "
          f"distinct={summary['distinct']} missing={summary['missing']} duplicates={summary['duplicates']} "
          f"unexpected={summary['unexpected']}"
          + (f" field_bad={len(field_bad)}" if required else "")
          + (f" level_bad={len(level_bad)}" if a.check_level else "")
          + (" OK" if not failed else " FAIL(" + ", ".join(failed) + ")"))
    for name, items in (("missing", missing_ids), ("unexpected", unexpected_ids)):
        for i in items[: a.show]:
            why = ""
            if name == "unexpected" and decisions is not None and i in decisions:
                why = f" (policy: {decisions[i][0]})"
            elif name == "unexpected" and i not in written_set:
                why = " (never written)"
            print(f"  {name}: {i}{why}")
    for f, m, n in missing_where:
        whole = " (the whole file)" if m == n else ""
        print(f"  missing {m} of the {n} events of {f}{whole}")
    if rcv.no_id:
        print(f"  {rcv.no_id} received line(s) without an auditID")
    for aid, why in field_bad[: a.show]:
        print(f"  field: {aid}: {why}")
    for aid, why in level_bad[: a.show]:
        print(f"  level: {aid}: {why}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f)
            f.write("\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
