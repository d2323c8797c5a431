#!/usr/bin/env python3
"""Asserts end-to-end delivery in the kind scenarios.

Written side: the audit log files on the control-plane node
(`docker exec NODE cat /var/log/kubernetes/audit/audit*.log`, the live file and
its rotated siblings), every event whose stageTimestamp is at or after
--since (T0, taken once the scenario's outputs were running).

Expected, per output: the events its policy keeps, decided by the same
binary the sidecar runs (`audit-forwarder policy eval`, executed in the
sidecar container), keyed by (auditID, stage).

Received: the receiver's `kubectl logs` (JSON lines; the receiver's own log
lines are text), plus saved log files of receiver pods that no longer exist
(--saved-logs).

Polls until nothing is missing or --timeout, then prints, per output:
written (events in the window), expected, received, missing, unexpected
(arrived although the policy drops them), duplicates, level mismatches
(level differs from the policy's decision) and field mismatches
(--expect-field), and the number of expected events of the scenario's own
traffic. Exit 0 only if nothing is missing or unexpected, levels and fields
match, duplicates are within --max-duplicates, and the scenario's traffic
is among the expected events.

Standard library only (the machine running the scenarios needs python3,
docker and kubectl, nothing else).
"""

import argparse
import calendar
import collections
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime

AUDIT_GLOB = "/var/log/kubernetes/audit/audit*.log"


def run(cmd, stdin=None, check=True, timeout=120):
    try:
        p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError("%s did not finish within %d s" % (" ".join(cmd), timeout))
    if check and p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode,
                                                   p.stderr.decode(errors="replace").strip()))
    return p.stdout


def parse_ts(s):
    """RFC 3339 with optional fraction, as the apiserver writes it -> epoch seconds."""
    if not isinstance(s, str) or not s.endswith("Z"):
        return None
    base, _, frac = s[:-1].partition(".")
    try:
        t = calendar.timegm(datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").timetuple())
    except ValueError:
        return None
    return t + (float("0." + frac) if frac.isdigit() else 0.0)


def key(ev):
    return (ev.get("auditID"), ev.get("stage"))


class Cluster:
    def __init__(self, args):
        self.args = args
        self.kubectl = ["kubectl", "--context", args.context]
        self.pod = "kube-apiserver-" + args.node

    def audit_lines(self):
        """Complete lines of every audit log file on the node."""
        raw = run(["docker", "exec", self.args.node, "sh", "-c",
                   "cat %s 2>/dev/null || true" % AUDIT_GLOB])
        lines = raw.split(b"\n")
        # Each file ends with a newline except, possibly, a live file being
        # written: its incomplete last line fails to parse below and is
        # taken at the next poll.
        return [line for line in lines if line.strip()]

    def eval_policy(self, policy, lines):
        """`audit-forwarder policy eval` of lines, in the sidecar or --eval-cmd."""
        if self.args.eval_cmd:
            cmd = shlex.split(self.args.eval_cmd) + ["policy", "eval", "--policy", local_policy(policy)]
        else:
            cmd = self.kubectl + ["-n", "kube-system", "exec", "-i", self.pod, "-c", "audit-forwarder",
                                  "--", "audit-forwarder", "policy", "eval", "--policy", policy]
        out = run(cmd, stdin=b"\n".join(lines) + b"\n").decode().splitlines()
        if len(out) != len(lines):
            raise RuntimeError("policy eval returned %d decisions for %d events" % (len(out), len(lines)))
        return [json.loads(o) for o in out]

    def receiver_lines(self, namespace):
        out = run(self.kubectl + ["-n", namespace, "logs", "-l", "app.kubernetes.io/name=audit-receiver",
                                  "--tail=-1", "--max-log-requests=20"], check=False)
        return out.split(b"\n")


def local_policy(policy):
    """Maps the sidecar's policy paths to kind/config/policies/ for --eval-cmd."""
    prefix = "/etc/audit-forwarder/policies/"
    if policy.startswith(prefix):
        here = os.path.dirname(os.path.abspath(__file__))
        return os.path.join(here, "..", "config", "policies", policy[len(prefix):])
    return policy


def received_events(lines):
    """Events among receiver log lines (JSON objects with an auditID)."""
    evs = []
    for line in lines:
        line = line.strip()
        if not line.startswith(b"{"):
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and "auditID" in ev:
            evs.append(ev)
    return evs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node", required=True, help="docker container of the control-plane node")
    ap.add_argument("--context", required=True, help="kubectl context")
    ap.add_argument("--since", type=float, required=True, help="T0, epoch seconds of the node's clock")
    ap.add_argument("--output", nargs=3, action="append", required=True,
                    metavar=("NAME", "NAMESPACE", "POLICY"),
                    help="an output: its name, its receiver's namespace, its policy as the sidecar sees it")
    ap.add_argument("--expect-field", nargs=3, action="append", default=[],
                    metavar=("OUTPUT", "FIELD", "VALUE"), help="a top-level field every event must have")
    ap.add_argument("--traffic-namespace", default="audit-traffic")
    ap.add_argument("--saved-logs", help="directory of *.log files of receiver pods that are gone")
    ap.add_argument("--max-duplicates", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between reading the audit files and the receivers' logs")
    ap.add_argument("--eval-cmd", help="run `policy eval` with this command instead of in the sidecar")
    args = ap.parse_args()

    cluster = Cluster(args)
    fields = collections.defaultdict(list)
    for out, field, value in args.expect_field:
        fields[out].append((field, value))
    saved = []
    if args.saved_logs:
        for f in sorted(glob.glob(os.path.join(args.saved_logs, "*.log"))):
            with open(f, "rb") as fh:
                saved.extend(fh.read().split(b"\n"))
    decisions = {name: {} for name, _, _ in args.output}   # (auditID, stage) -> decision
    deadline = time.monotonic() + args.timeout
    polls = 0
    while True:
        polls += 1
        window = {}      # key -> (raw line, event)
        for line in cluster.audit_lines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ts = parse_ts(ev.get("stageTimestamp")) if isinstance(ev, dict) else None
            if ts is not None and ts >= args.since and ev.get("auditID"):
                window[key(ev)] = (line, ev)
        for name, _, policy in args.output:
            new = [k for k in window if k not in decisions[name]]
            if new:
                for k, d in zip(new, cluster.eval_policy(policy, [window[k][0] for k in new])):
                    decisions[name][k] = d
        time.sleep(args.settle)
        results = []
        for name, namespace, _ in args.output:
            got = received_events(cluster.receiver_lines(namespace) + saved)
            results.append(compare(name, window, decisions[name], got, fields[name], args))
        missing = sum(r["missing"] for r in results)
        if missing == 0 or time.monotonic() >= deadline:
            break
        print("poll %d: %d event(s) not yet received; waiting" % (polls, missing), file=sys.stderr)
        time.sleep(3)

    ok = report(results, args)
    sys.exit(0 if ok else 1)


def entry():
    try:
        main()
    except RuntimeError as e:
        print("assert.py: %s" % e, file=sys.stderr)
        print("RESULT: FAIL")
        sys.exit(2)


def compare(name, window, decisions, got, fields, args):
    expected = {k for k, d in decisions.items() if k in window and d.get("action") == "keep"}
    counts = collections.Counter()
    level_bad, field_bad, unexpected = [], [], []
    for ev in got:
        k = key(ev)
        if k not in window:
            continue    # before T0, or written after the snapshot
        counts[k] += 1
        if counts[k] > 1:
            continue
        if k not in expected:
            unexpected.append(ev)
            continue
        want = decisions[k].get("level")
        if ev.get("level") != want:
            level_bad.append((ev, want))
        for field, value in fields:
            if ev.get(field) != value:
                field_bad.append((ev, field, value))
    missing = sorted(expected - set(counts), key=lambda k: window[k][1].get("stageTimestamp", ""))
    traffic = sum(1 for k in expected
                  if (window[k][1].get("objectRef") or {}).get("namespace") == args.traffic_namespace)
    return {
        "name": name,
        "written": len(window),
        "expected": len(expected),
        "received": len(expected & set(counts)),
        "missing": len(missing),
        "missing_sample": [window[k][1] for k in missing[:10]],
        "unexpected": len(unexpected),
        "unexpected_sample": unexpected[:5],
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "level": len(level_bad),
        "level_sample": level_bad[:5],
        "field": len(field_bad),
        "field_sample": field_bad[:5],
        "traffic": traffic,
    }


def describe(ev):
    ref = ev.get("objectRef") or {}
    what = "/".join(x for x in (ref.get("namespace"), ref.get("resource"), ref.get("name")) if x)
    return "%s %s %s %s %s" % (ev.get("stageTimestamp"), ev.get("auditID"), ev.get("stage"),
                               ev.get("verb"), what or ev.get("requestURI"))


def report(results, args):
    cols = ["written", "expected", "received", "missing", "unexpected", "duplicates", "level", "field", "traffic"]
    print("%-14s %s" % ("output", " ".join("%10s" % c for c in cols)))
    ok = True
    for r in results:
        print("%-14s %s" % (r["name"], " ".join("%10d" % r[c] for c in cols)))
        problems = []
        if r["missing"]:
            problems.append("%d expected event(s) never arrived" % r["missing"])
            problems += ["  missing: " + describe(ev) for ev in r["missing_sample"]]
        if r["unexpected"]:
            problems.append("%d event(s) arrived that the policy drops" % r["unexpected"])
            problems += ["  unexpected: " + describe(ev) for ev in r["unexpected_sample"]]
        if r["level"]:
            problems.append("%d event(s) with another level than the policy decided" % r["level"])
            problems += ["  level %s, want %s: %s" % (ev.get("level"), want, describe(ev))
                         for ev, want in r["level_sample"]]
        if r["field"]:
            problems.append("%d event(s) without the expected field" % r["field"])
            problems += ["  %s=%r, want %r: %s" % (f, ev.get(f), v, describe(ev)) for ev, f, v in r["field_sample"]]
        if r["duplicates"] > args.max_duplicates:
            problems.append("%d duplicate(s), more than %d allowed" % (r["duplicates"], args.max_duplicates))
        if r["traffic"] == 0:
            problems.append("none of the scenario's own events (namespace %s) is among the expected ones"
                            % args.traffic_namespace)
        for p in problems:
            print("  %s: %s" % (r["name"], p))
        ok = ok and not problems
    print("columns: written = events the apiserver wrote since T0; expected = kept by the output's policy;")
    print("         received = expected events in the receiver's output; level/field = mismatches;")
    print("         traffic = expected events of the scenario's own requests (namespace %s)" % args.traffic_namespace)
    print("RESULT: %s" % ("PASS" if ok else "FAIL"))
    return ok


if __name__ == "__main__":
    entry()
