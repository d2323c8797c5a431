#!/usr/bin/env python3
"""Imitates kube-apiserver's audit log backend (--audit-log-path).

Writes `audit.k8s.io/v1` Event JSON lines, one per request, at a steady rate
(optionally with bursts), and rotates the file the way kube-apiserver does
with lumberjack (--audit-log-maxsize / --audit-log-maxbackup):

  * before a write that would make audit.log exceed --max-size bytes,
    audit.log is renamed to audit-<UTC 2006-01-02T15-04-05.000>.log and a new
    audit.log is created;
  * at most --max-backup rotated files are kept, the oldest (by the timestamp
    in the name) are deleted (0 = keep all, as lumberjack);
  * with --compress, a rotated file is gzipped to .log.gz and the plain one
    removed (lumberjack's Compress).

Every event's key is appended to the manifest (--ids) only after its line was
written to audit.log, so a checker knows exactly what was written even when
rotated files were deleted since. The key is the auditID, followed by
"/<stage>" for stages other than ResponseComplete (--request-received logs
some requests twice, at RequestReceived and ResponseComplete, as the
apiserver does unless its policy omits RequestReceived).

Content is deterministic for a --seed (except the timestamps, which are the
wall clock like the apiserver's). Loops are bounded: the writer stops after
--count events or --duration seconds (whichever first; at least one of them
is required), or at SIGTERM/SIGINT (the line being written is finished, the
manifest flushed, exit 0). A summary is printed as one JSON line on stdout.

Deviation from lumberjack, on purpose: a single event larger than --max-size
is written to a file of its own (lumberjack refuses such a write), and two
rotations within the same millisecond get distinct names (lumberjack's
rename would overwrite the first).
"""

import argparse
import datetime as dt
import gzip
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import uuid

STOP = False


def _on_signal(signum, frame):  # noqa: ARG001
    global STOP
    STOP = True


def parse_size(s):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)[bB]?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 1048576, 512KB, 1MB, 1MiB)")
    n, unit, _ = m.groups()
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]
    return int(float(n) * mult)


# --- event content ---------------------------------------------------------

USERS = [
    ("system:kube-controller-manager", ["system:authenticated"], "kube-controller-manager/v1.32.1 (linux/amd64) kubernetes/8f94681/leader-election"),
    ("system:kube-scheduler", ["system:authenticated"], "kube-scheduler/v1.32.1 (linux/amd64) kubernetes/8f94681/scheduler"),
    ("system:serviceaccount:kube-system:replicaset-controller",
     ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
     "kube-controller-manager/v1.32.1 (linux/amd64) kubernetes/8f94681/system:serviceaccount:kube-system:replicaset-controller"),
    ("system:node:worker-1", ["system:nodes", "system:authenticated"], "kubelet/v1.32.1 (linux/amd64) kubernetes/8f94681"),
    ("system:node:worker-2", ["system:nodes", "system:authenticated"], "kubelet/v1.32.1 (linux/amd64) kubernetes/8f94681"),
    ("alice@example.com", ["developers", "system:authenticated"], "kubectl/v1.32.0 (linux/amd64) kubernetes/70d3cc9"),
    ("bob@example.com", ["sre", "system:authenticated"], "kubectl/v1.31.4 (darwin/arm64) kubernetes/a78aa47"),
    ("system:apiserver", ["system:masters"], "kube-apiserver/v1.32.1 (linux/amd64) kubernetes/8f94681"),
    ("system:serviceaccount:gatekeeper-system:gatekeeper-admin",
     ["system:serviceaccounts", "system:serviceaccounts:gatekeeper-system", "system:authenticated"],
     "gatekeeper/v3.17.1 (linux/amd64) 9c54e13/controller"),
]
USER_WEIGHTS = [20, 8, 10, 12, 12, 6, 4, 6, 3]

# (apiGroup, version, resource, subresource, namespaced, weight)
RESOURCES = [
    ("", "v1", "pods", "", True, 18),
    ("", "v1", "pods", "status", True, 4),
    ("", "v1", "pods", "exec", True, 2),
    ("", "v1", "pods", "log", True, 3),
    ("", "v1", "pods", "portforward", True, 1),
    ("", "v1", "services", "proxy", True, 1),
    ("", "v1", "configmaps", "", True, 8),
    ("", "v1", "secrets", "", True, 6),
    ("", "v1", "nodes", "", False, 6),
    ("", "v1", "namespaces", "", False, 3),
    ("", "v1", "endpoints", "", True, 5),
    ("", "v1", "events", "", True, 5),
    ("apps", "v1", "deployments", "", True, 6),
    ("apps", "v1", "statefulsets", "", True, 2),
    ("apps", "v1", "daemonsets", "", True, 2),
    ("apps", "v1", "replicasets", "", True, 4),
    ("coordination.k8s.io", "v1", "leases", "", True, 10),
    ("cluster.k8s.io", "v1alpha1", "machines", "", True, 2),
    ("cluster.k8s.io", "v1alpha1", "machinedeployments", "", True, 1),
    ("templates.gatekeeper.sh", "v1", "constrainttemplates", "", False, 1),
]
RES_WEIGHTS = [r[5] for r in RESOURCES]
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
VERB_WEIGHTS = [30, 14, 8, 10, 16, 12, 10]
NONRESOURCE = ["/healthz", "/readyz", "/livez", "/version", "/openapi/v2", "/api", "/apis"]
NAMESPACES = ["kube-system", "default", "monitoring", "shoot--prod--a", "gatekeeper-system"]
STATUS = [(200, 88), (201, 3), (404, 4), (409, 2), (403, 2), (500, 1)]


def go_escape(s):
    """Go's encoding/json escapes <, > and & (they only occur in strings)."""
    return s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def ts(t):
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Generator:
    def __init__(self, seed, rr_fraction, big_every, big_bytes, request_received=0.0):
        self.rng = random.Random(seed)
        self.request_received = request_received
        self.rr_fraction = rr_fraction
        self.big_every = big_every
        self.big_bytes = big_bytes
        self.seq = 0

    def _body(self, kind, api_version, name, ns, size):
        r = self.rng
        # random payload (incompressible-ish) plus managedFields, like a real object
        blob = r.randbytes(max(size // 2, 1)).hex()
        meta = {
            "name": name,
            "uid": str(uuid.UUID(int=r.getrandbits(128), version=4)),
            "resourceVersion": str(r.randrange(10**6, 10**8)),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": name.rsplit("-", 1)[0], "tier": r.choice(["web", "db", "cache"])},
            "managedFields": [
                {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": api_version,
                 "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}},
            ],
        }
        if ns:
            meta["namespace"] = ns
        return {"kind": kind, "apiVersion": api_version, "metadata": meta, "data": {"payload": blob}}

    def event(self, now):
        r = self.rng
        self.seq += 1
        user, groups, agent = r.choices(USERS, USER_WEIGHTS)[0]
        status = r.choices([s[0] for s in STATUS], [s[1] for s in STATUS])[0]
        audit_id = str(uuid.UUID(int=r.getrandbits(128), version=4))
        ev = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": audit_id,
            "stage": "ResponseComplete",
        }
        big = self.big_every and self.seq % self.big_every == 0
        rr = big or r.random() < self.rr_fraction
        if r.random() < 0.06:
            # non-resource request (no objectRef)
            path = r.choice(NONRESOURCE)
            ev.update(requestURI=path, verb="get")
            obj_size = None
        else:
            group, version, resource, sub, namespaced, _ = r.choices(RESOURCES, RES_WEIGHTS)[0]
            verb = r.choices(VERBS, VERB_WEIGHTS)[0]
            if sub in ("exec", "portforward", "proxy"):
                verb = "create" if sub != "proxy" else r.choice(["get", "create"])
            elif sub == "log":
                verb = "get"
            elif sub == "status":
                verb = r.choice(["update", "patch", "get"])
            ns = r.choice(NAMESPACES) if namespaced else ""
            if resource == "secrets" and r.random() < 0.15:
                name = "usersshkeys"
            else:
                name = f"{resource.rstrip('s')}-{r.randrange(1000):03d}"
            prefix = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
            base = f"{prefix}/namespaces/{ns}/{resource}" if ns else f"{prefix}/{resource}"
            if verb in ("list", "watch"):
                uri = base + ("?limit=500&resourceVersion=0" if verb == "list" else "?allowWatchBookmarks=true&timeout=9m13s&watch=true")
                name = ""
            elif verb == "create" and not sub:
                uri = base  # the name comes from the body
            else:
                uri = f"{base}/{name}" + (f"/{sub}" if sub else "")
                if sub == "exec":
                    uri += "?command=sh&container=app&stdin=true&stdout=true&tty=true"
            ev.update(requestURI=uri, verb=verb)
            ref = {"resource": resource, "namespace": ns, "name": name, "apiGroup": group, "apiVersion": version}
            if not ns:
                del ref["namespace"]
            if not name:
                del ref["name"]
            if not group:
                del ref["apiGroup"]
            if sub:
                ref["subresource"] = sub
            ev["objectRef"] = ref
            obj_size = (group, version, resource, name, ns, verb)
        ev["user"] = {"username": user, "groups": groups}
        if user.startswith("system:serviceaccount:"):
            ev["user"]["uid"] = str(uuid.UUID(int=r.getrandbits(128), version=4))
        ev["sourceIPs"] = [f"10.250.{r.randrange(256)}.{r.randrange(1, 255)}"]
        ev["userAgent"] = agent
        code = status if not (ev["verb"] == "create" and status == 200) else 201
        ev["responseStatus"] = {"metadata": {}, "code": code}
        if code >= 400:
            ev["responseStatus"].update(status="Failure", reason={403: "Forbidden", 404: "NotFound", 409: "Conflict"}.get(code, "InternalError"),
                                        message=f"request failed with code {code} <details> & more")
        start = now - r.uniform(0.0005, 0.05)
        ev["requestReceivedTimestamp"] = ts(start)
        ev["stageTimestamp"] = ts(now)
        ev["annotations"] = {
            "authorization.k8s.io/decision": "allow" if code != 403 else "forbid",
            "authorization.k8s.io/reason": f'RBAC: allowed by ClusterRoleBinding "{user}" of ClusterRole "{user}" to User "{user}"',
        }
        if rr and obj_size is not None:
            group, version, resource, name, ns, verb = obj_size
            ev["level"] = "RequestResponse"
            size = self.big_bytes if big else r.randrange(10_000, 200_000)
            kind = resource[:-1].capitalize() if resource.endswith("s") else resource.capitalize()
            api_version = version if not group else f"{group}/{version}"
            body = self._body(kind, api_version, name or f"{resource}-list", ns, size)
            if verb in ("create", "update", "patch"):
                ev["requestObject"] = body if verb != "patch" else {"metadata": {"labels": {"patched": "true"}}, "data": body["data"]}
            ev["responseObject"] = body if verb not in ("list", "watch") else {
                "kind": kind + "List", "apiVersion": api_version, "metadata": {"resourceVersion": "1"}, "items": [body]}
        elif ev["verb"] in ("create", "update", "patch") and r.random() < 0.3:
            ev["level"] = "Request"
            ev["requestObject"] = {"metadata": {"labels": {"small": "change"}}}
        out = []
        if self.request_received and r.random() < self.request_received:
            # The apiserver logs stage RequestReceived first (same auditID)
            # unless its policy omits that stage.
            rr_ev = {k: v for k, v in ev.items() if k not in ("responseStatus", "responseObject")}
            rr_ev["stage"] = "RequestReceived"
            rr_ev["stageTimestamp"] = rr_ev["requestReceivedTimestamp"]
            rr_ev.pop("annotations", None)
            out.append((f"{audit_id}/RequestReceived", encode(rr_ev)))
        out.append((audit_id, encode(ev)))
        return out


def encode(ev):
    return (go_escape(json.dumps(ev, separators=(",", ":"), ensure_ascii=False)) + "\n").encode()


# --- lumberjack-like rotation ----------------------------------------------

class Log:
    TS_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3})$")

    def __init__(self, path, max_size, max_backup, compress):
        self.path = path
        self.dir = os.path.dirname(os.path.abspath(path))
        base = os.path.basename(path)
        self.stem, self.ext = os.path.splitext(base)
        self.max_size = max_size
        self.max_backup = max_backup
        self.compress = compress
        self.rotations = 0
        self.deleted = 0
        os.makedirs(self.dir, exist_ok=True)
        self._open()

    def _open(self):
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _backup_name(self):
        t = time.time()
        while True:
            stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
            name = os.path.join(self.dir, f"{self.stem}-{stamp}{self.ext}")
            if not os.path.exists(name) and not os.path.exists(name + ".gz"):
                return name
            t += 0.001

    def _backups(self):
        out = []
        prefix = self.stem + "-"
        for n in os.listdir(self.dir):
            if not n.startswith(prefix):
                continue
            rest = n[len(prefix):]
            for suf in (self.ext + ".gz", self.ext):
                if rest.endswith(suf) and self.TS_RE.match(rest[: -len(suf)]):
                    out.append((rest[: -len(suf)], n))
                    break
        return sorted(out)

    def rotate(self):
        os.close(self.fd)
        backup = self._backup_name()
        os.rename(self.path, backup)
        self._open()
        self.rotations += 1
        if self.compress:
            with open(backup, "rb") as src, gzip.open(backup + ".gz.tmp", "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)
            os.rename(backup + ".gz.tmp", backup + ".gz")
            os.remove(backup)
        if self.max_backup > 0:
            backups = self._backups()
            for _, n in backups[: max(0, len(backups) - self.max_backup)]:
                os.remove(os.path.join(self.dir, n))
                self.deleted += 1

    def write(self, data):
        if self.max_size > 0 and self.size > 0 and self.size + len(data) > self.max_size:
            self.rotate()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def close(self):
        os.close(self.fd)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="audit.log", help="the audit log (kube-apiserver --audit-log-path)")
    p.add_argument("--rate", type=float, default=200.0, help="steady events per second (0: as fast as possible)")
    p.add_argument("--burst", type=int, default=0, help="also write this many events at once every --burst-every seconds")
    p.add_argument("--burst-every", type=float, default=3.0)
    p.add_argument("--count", type=int, help="stop after this many lines (one more if the last request is logged at two stages)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-size", type=parse_size, default=parse_size("100MB"),
                   help="rotate before audit.log would exceed this (bytes, or 1MB, 512KB; 0 = never)")
    p.add_argument("--max-backup", type=int, default=0, help="rotated files to keep (0 = all)")
    p.add_argument("--compress", action="store_true", help="gzip rotated files")
    p.add_argument("--rr-fraction", type=float, default=0.04,
                   help="fraction of resource events at level RequestResponse with 10-200 KB bodies")
    p.add_argument("--big-every", type=int, default=0, help="every Nth event is a RequestResponse event of --big-bytes")
    p.add_argument("--big-bytes", type=parse_size, default=parse_size("3MB"))
    p.add_argument("--request-received", type=float, default=0.0, metavar="FRACTION",
                   help="this fraction of requests is also logged at stage RequestReceived first (same auditID)")
    p.add_argument("--ids", help="append each written event's key to this file (after the line is written)")
    a = p.parse_args()
    if a.count is None and a.duration is None:
        p.error("give --count and/or --duration (the writer never runs unbounded)")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    gen = Generator(a.seed, a.rr_fraction, a.big_every, a.big_bytes, a.request_received)
    log = Log(a.path, a.max_size, a.max_backup, a.compress)
    ids = open(a.ids, "a", buffering=1024 * 1024) if a.ids else None
    count = a.count if a.count is not None else float("inf")
    t0 = time.monotonic()
    end = t0 + a.duration if a.duration is not None else float("inf")
    written = 0
    steady = 0  # events written by the steady schedule
    nbytes = 0
    next_burst = t0 + a.burst_every if a.burst > 0 else float("inf")
    tick = 0.01

    def emit(n):
        nonlocal written, nbytes
        done = []
        for _ in range(n):
            if STOP or written >= count:
                break
            for key, line in gen.event(time.time()):
                log.write(line)
                written += 1
                nbytes += len(line)
                done.append(key)
        if ids and done:
            ids.write("\n".join(done) + "\n")
            ids.flush()
        return len(done)

    while not STOP and written < count:
        now = time.monotonic()
        if now >= end:
            break
        if a.rate > 0:
            due = int((now - t0) * a.rate) - steady
            if due > 0:
                steady += emit(min(due, 10_000))
        else:
            steady += emit(100)
        if now >= next_burst:
            emit(a.burst)
            next_burst += a.burst_every
        if a.rate > 0:
            nxt = t0 + (steady + 1) / a.rate
            time.sleep(min(max(nxt - time.monotonic(), 0.0), tick, max(end - time.monotonic(), 0.0)))

    if ids:
        ids.close()
    log.close()
    summary = {
        "written": written, "bytes": nbytes, "rotations": log.rotations, "deleted": log.deleted,
        "seconds": round(time.monotonic() - t0, 3), "stopped_by_signal": STOP,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
