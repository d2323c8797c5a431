#!/usr/bin/env python3
"""Fault-injection suite for audit-forwarder (issue #10).

Drives the real binaries (`audit-forwarder forward` / `receive`) with
scripts/audit-writer.py imitating kube-apiserver's audit log backend (steady
rate plus bursts, rotation by rename, an occasional multi-MB event), injects
one kind of fault per scenario, and checks by auditID that the receiver got
every event the writer wrote (the writer's --ids manifest).

    scripts/faults/run.sh [--short] [SCENARIO...]      (see scripts/faults/README.md)

Scenarios (by number or name):
  1 kill-forwarder   SIGKILL the forwarder at random moments (50 times), restart it
  2 kill-receiver    SIGKILL the receiver repeatedly, restart it (new output file each time)
  3 proxy            tinyproxy SIGKILLed and restarted; a phase where the proxy answers 502
  4 network          netns + veth: netem delay 100ms loss 10%, then link down, then up
  5 rotation-storm   rotate every 100 KB, maxbackup deletion; files deleted while the
                     forwarder is stopped must be a reported gap
  6 state-full       state_dir on a 256k tmpfs filled up: checkpoint writes fail, are retried
  7 slow-receiver    receiver SIGSTOP/SIGCONT cycles under a high write rate: RSS bounded

Exit status: 0 when every selected scenario passed, 1 when one failed (missing > 0 or a
failed check), 2 on a usage or environment error.
"""

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WRITER = os.path.join(REPO, "scripts", "audit-writer.py")
PROXY502 = os.path.join(HERE, "connect502.py")
NETIMPAIR = os.path.join(HERE, "netimpair.py")
ANSI = re.compile(rb"\x1b\[[0-9;]*m")
MB = 1024 * 1024

SCENARIOS = [
    (1, "kill-forwarder", "forwarder SIGKILLed at random moments"),
    (2, "kill-receiver", "receiver SIGKILLed and restarted"),
    (3, "proxy", "CONNECT proxy killed; 502 phase"),
    (4, "network", "netns: netem delay+loss, link down/up"),
    (5, "rotation-storm", "rotation storm; deleted unread files = gap"),
    (6, "state-full", "state_dir tmpfs full (ENOSPC)"),
    (7, "slow-receiver", "slow receiver (SIGSTOP/SIGCONT): bounded memory"),
    (8, "kill-both", "forwarder and receiver SIGKILLed alternately"),
]


class Fail(Exception):
    """A scenario cannot go on (a wait timed out, a process died)."""


class Interrupted(BaseException):
    pass


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def af_bin():
    b = os.environ.get("AF_BIN")
    if not b:
        rel = os.path.join(REPO, "target", "release", "audit-forwarder")
        b = rel if os.access(rel, os.X_OK) else os.path.join(REPO, "target", "debug", "audit-forwarder")
    elif not os.path.isabs(b):
        b = b if os.access(b, os.X_OK) and os.sep in b and os.path.exists(b) else os.path.join(REPO, b)
    return os.path.abspath(b)


def wait_for(cond, timeout, what, every=0.05):
    """Polls cond() until it is truthy or `timeout` seconds passed (then Fail)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise Fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------------------
# cleanup registry: everything started or created, so that it is undone in a
# `finally` here and, as a backup, by run.sh's trap (faults.py --cleanup FILE)


def proc_start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Registry:
    def __init__(self, path):
        self.path = path
        self.procs = {}  # pid -> Popen
        self.netns = []
        self.mounts = []
        self.lock = threading.Lock()

    def _append(self, line):
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def add_proc(self, p):
        with self.lock:
            self.procs[p.pid] = p
        self._append(f"pid {p.pid} {proc_start_time(p.pid)}")

    def add_netns(self, name):
        self.netns.append(name)
        self._append(f"netns {name}")

    def add_mount(self, path):
        self.mounts.append(path)
        self._append(f"mount {path}")

    def cleanup(self):
        with self.lock:
            procs = list(self.procs.values())
            self.procs.clear()
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"warning: pid {p.pid} did not exit after SIGKILL")
        for ns in reversed(self.netns):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.netns.clear()
        for m in reversed(self.mounts):
            if subprocess.run(["umount", m], stderr=subprocess.DEVNULL).returncode != 0:
                subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
        self.mounts.clear()


def cleanup_from_file(path):
    """Backup cleanup (run.sh trap): undo what a registry file lists."""
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return 0
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "pid":
            pid, _, st = rest.partition(" ")
            if proc_start_time(int(pid)) == st and st != "None":
                try:
                    os.kill(int(pid), signal.SIGCONT)
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for line in reversed(lines):
        kind, _, rest = line.partition(" ")
        if kind == "netns" and os.path.exists(f"/run/netns/{rest}"):
            subprocess.run(["ip", "netns", "del", rest], stderr=subprocess.DEVNULL)
        elif kind == "mount":
            if subprocess.run(["mountpoint", "-q", rest]).returncode == 0:
                subprocess.run(["umount", "-l", rest], stderr=subprocess.DEVNULL)
    return 0


REG = Registry(None)

USED_PORTS = set()


def free_port(host="127.0.0.1"):
    """A free TCP port below the ephemeral range (32768-60999), so that a
    restarted server gets it back and an outgoing connection never takes it."""
    rng = random.SystemRandom()
    for _ in range(500):
        p = rng.randint(20000, 32000)
        if p in USED_PORTS:
            continue
        s = socket.socket()
        try:
            s.bind((host, p))
        except OSError:
            continue
        finally:
            s.close()
        USED_PORTS.add(p)
        return p
    raise Fail("no free port")


# --------------------------------------------------------------------------
# processes


class Proc:
    def __init__(self, name, argv, logpath, ns=None, env=None):
        self.name = name
        if ns:
            argv = ["ip", "netns", "exec", ns] + argv  # ip execs: same pid
        self.logpath = logpath
        with open(logpath, "ab") as lf:
            lf.write(f"===== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            lf.flush()
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True)
        REG.add_proc(self.p)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self):
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)
            self.p.kill()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise Fail(f"{self.name} (pid {self.pid}) survived SIGKILL for 10s")

    def stop(self, timeout):
        """SIGTERM; returns the exit code, or None when it had to be SIGKILLed."""
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def read_log(path, start=0):
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return ANSI.sub(b"", f.read()).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def log_size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def tail_text(path, n=15):
    return "\n".join("      | " + line for line in read_log(path).splitlines()[-n:])


# --------------------------------------------------------------------------
# configuration


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


def render_toml(top, tables):
    out = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for header, kv in tables:
        out.append("")
        out.append(header)
        out.extend(f"{k} = {toml_value(v)}" for k, v in kv.items())
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# the receiver output, by auditID


class Received:
    """Reads every receiver output file (one per receiver incarnation)
    incrementally; counts each event key (auditID, "/<stage>" unless
    ResponseComplete, as scripts/audit-writer.py's manifest)."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.pos = {}
        self.rest = {}
        self.fileno = {}
        self.counts = {}
        self.first_file = {}
        self.lines = 0
        self.bad = 0
        self.dup_same = 0
        self.dup_cross = 0

    def poll(self):
        for p in sorted(glob.glob(self.pattern)):
            if p not in self.pos:
                self.pos[p] = 0
                self.rest[p] = b""
                self.fileno[p] = len(self.fileno)
            with open(p, "rb") as f:
                f.seek(self.pos[p])
                data = f.read()
            if not data:
                continue
            self.pos[p] += len(data)
            data = self.rest[p] + data
            cut = data.rfind(b"\n") + 1
            self.rest[p] = data[cut:]
            fno = self.fileno[p]
            for line in data[:cut].split(b"\n"):
                if line.strip():
                    self._line(line, fno)
        return self

    def _line(self, line, fno):
        try:
            rec = json.loads(line)
            aid = rec.get("auditID") if isinstance(rec, dict) else None
        except ValueError:
            aid = None
        if not isinstance(aid, str):
            self.bad += 1
            return
        stage = rec.get("stage", "ResponseComplete")
        key = aid if stage == "ResponseComplete" else f"{aid}/{stage}"
        self.lines += 1
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        if n == 0:
            self.first_file[key] = fno
        elif self.first_file[key] == fno:
            self.dup_same += 1
        else:
            self.dup_cross += 1

    def torn(self):
        """Trailing bytes without a newline (a receiver killed mid-line)."""
        return sum(1 for r in self.rest.values() if r.strip())

    def missing(self, ids):
        return [i for i in ids if i not in self.counts]


def read_ids(path):
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def ids_on_disk(logdir):
    """Event keys still present in the audit log files."""
    keys = set()
    pat = re.compile(rb'"auditID":"([^"]+)","stage":"([A-Za-z]+)"')
    for p in glob.glob(os.path.join(logdir, "audit*.log*")):
        with open(p, "rb") as f:
            for line in f:
                m = pat.search(line, 0, 400)
                if m:
                    aid, stage = m.group(1).decode(), m.group(2).decode()
                    keys.add(aid if stage == "ResponseComplete" else f"{aid}/{stage}")
    return keys


# --------------------------------------------------------------------------
# scenario plumbing


class Scenario:
    def __init__(self, suite, num, name, title):
        self.suite = suite
        self.num, self.name, self.title = num, name, title
        self.short = suite.short
        self.rng = random.Random(f"{suite.seed}-{num}")
        self.dir = os.path.join(suite.workdir, f"{num}-{name}")
        os.makedirs(self.dir)
        self.logdir = os.path.join(self.dir, "log")
        os.makedirs(self.logdir)
        self.audit_log = os.path.join(self.logdir, "audit.log")
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir)
        self.outdir = os.path.join(self.dir, "received")
        os.makedirs(self.outdir)
        self.received = Received(os.path.join(self.outdir, "out-*.jsonl"))
        self.checks = []
        self.notes = []
        self.written = 0
        self.missing = 0
        self.gap = 0
        self.dup_why = ""
        self.rss = RssSampler()
        self.forwarder = None
        self.receiver = None
        self.writers = []

    def check(self, ok, text):
        self.checks.append((bool(ok), text))
        log(f"  [{'ok' if ok else 'FAIL'}] {text}")
        return ok

    def note(self, text):
        self.notes.append(text)
        log(f"  note: {text}")

    def sleep(self, lo, hi=None):
        """A random pause: the moment of a fault (not a synchronisation)."""
        time.sleep(lo if hi is None else self.rng.uniform(lo, hi))

    # --- processes of the scenario

    def writer(self, tag, **kw):
        w = Writer(self, tag, **kw)
        self.writers.append(w)
        return w

    def written_ids(self):
        out = []
        for w in self.writers:
            out.extend(w.ids())
        return out

    def wait_received(self, ids, timeout, what="every written event at the receiver"):
        """Polls the receiver output until every id arrived, or the
        forwarder has settled (caught up: lag_bytes and buffered_bytes 0 and
        nothing new received for 3 s), or timeout; returns the ids missing."""
        deadline = time.monotonic() + timeout
        pending = ids
        last_lines, last_change, next_metrics = -1, time.monotonic(), 0.0
        while True:
            self.received.poll()
            pending = [i for i in pending if i not in self.received.counts]
            now = time.monotonic()
            if not pending or now >= deadline:
                break
            if self.received.lines != last_lines:
                last_lines, last_change = self.received.lines, now
            fwd = self.forwarder
            if fwd is not None and fwd.alive() and now >= next_metrics and now - last_change >= 3:
                next_metrics = now + 1
                try:
                    m = fwd.metrics()
                    if fwd.metric("lag_bytes", m) == 0 and fwd.metric("buffered_bytes", m) == 0 \
                            and fwd.metric("connected", m) == 1:
                        log(f"  forwarder caught up (lag_bytes 0, buffered_bytes 0, nothing new for "
                            f"{now - last_change:.0f} s) with events still missing")
                        break
                except (OSError, Fail):
                    pass
            time.sleep(0.2)
        if pending:
            log(f"  {len(pending)} of {len(ids)} events still missing ({what})")
        return pending

    def finish(self, ids, timeout, gap_ok=frozenset()):
        """Final accounting: written = ids; waits (bounded) until all arrived.
        Events in gap_ok (deleted before they could be read, reported as a
        gap) are counted as `gap`, not as missing."""
        want = [i for i in ids if i not in gap_ok]
        missing = self.wait_received(want, timeout)
        self.received.poll()
        if os.environ.get("AF_FAULTS_INJECT") == "drop" and want:
            # Self-test of the checker: pretend one received event was lost.
            victim = want[len(want) // 2]
            self.received.counts.pop(victim, None)
            missing = self.received.missing(want)
            self.note(f"AF_FAULTS_INJECT=drop: removed {victim} from the received set")
        self.written = len(ids)
        self.missing = len(missing)
        self.gap = sum(1 for i in gap_ok if i not in self.received.counts)
        extra = set(self.received.counts) - set(ids)
        for i in missing[:5]:
            log(f"    missing: {i}")
        if missing:
            self.explain_missing(missing)
        self.check(not missing, f"missing {len(missing)} of {len(want)} events"
                   + (f" (+{self.gap} in deleted files, reported gap)" if gap_ok else ""))
        self.check(not extra, f"{len(extra)} received events were never written")
        if self.received.bad:
            self.check(False, f"{self.received.bad} received line(s) without an auditID / not JSON")
        t = self.received.torn()
        if t:
            self.note(f"{t} receiver output file(s) end in a torn line (receiver killed mid-write, never acked)")
        return missing

    def explain_missing(self, missing):
        """Are the missing events in files still on disk (never read), or were
        their files deleted?"""
        disk = ids_on_disk(self.logdir)
        present = [i for i in missing if i in disk]
        files = set()
        for p in glob.glob(os.path.join(self.logdir, "audit*.log*")):
            with open(p, "rb") as f:
                data = f.read()
            if any(i.split("/")[0].encode() in data for i in present[:50]):
                files.add(os.path.basename(p))
        order = {k: n for n, k in enumerate(self.written_ids())}
        idx = sorted(order[i] for i in missing if i in order)
        runs = []
        for n in idx:
            if runs and n == runs[-1][1] + 1:
                runs[-1][1] = n
            else:
                runs.append([n, n])
        self.note(f"{len(present)} of the {len(missing)} missing events are in files still on disk, never "
                  f"forwarded{': ' + ', '.join(sorted(files)[:6]) if files else ''}; "
                  f"{len(missing) - len(present)} are in files deleted since; missing runs in write order "
                  f"(events before and after each run arrived): "
                  + ", ".join(f"#{a}..#{b} ({b - a + 1})" for a, b in runs[:8]))

    @property
    def duplicates(self):
        return self.received.dup_same + self.received.dup_cross

    def ok(self):
        return all(c[0] for c in self.checks) and self.missing == 0

    def cleanup(self):
        self.rss.stop()
        REG.cleanup()


class Writer:
    """scripts/audit-writer.py as a subprocess (bounded by --duration)."""

    def __init__(self, sc, tag, rate, duration, max_size="2MB", max_backup=0, burst=0, burst_every=3.0,
                 big_every=0, big_bytes="3MB", rr_fraction=0.04, request_received=0.02, count=None):
        self.sc = sc
        self.tag = tag
        self.idsfile = os.path.join(sc.dir, f"ids-{tag}.txt")
        self.summary_file = os.path.join(sc.dir, f"writer-{tag}.json")
        argv = [sys.executable, WRITER, "--path", sc.audit_log, "--rate", str(rate), "--duration", str(duration),
                "--seed", str(sc.rng.randrange(1 << 30)), "--max-size", str(max_size),
                "--max-backup", str(max_backup), "--rr-fraction", str(rr_fraction),
                "--request-received", str(request_received), "--ids", self.idsfile]
        if burst:
            argv += ["--burst", str(burst), "--burst-every", str(burst_every)]
        if big_every:
            argv += ["--big-every", str(big_every), "--big-bytes", str(big_bytes)]
        if count:
            argv += ["--count", str(count)]
        self.out = open(self.summary_file, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out,
                                  stderr=open(os.path.join(sc.dir, f"writer-{tag}.err"), "wb"),
                                  start_new_session=True)
        REG.add_proc(self.p)
        self.duration = duration

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.wait(30)

    def wait(self, timeout=None):
        try:
            rc = self.p.wait(timeout=timeout if timeout is not None else self.duration + 60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise Fail(f"writer {self.tag} did not finish")
        if rc != 0:
            err = open(os.path.join(self.sc.dir, f"writer-{self.tag}.err")).read()[-500:]
            raise Fail(f"writer {self.tag} exited {rc}: {err}")
        self.out.flush()
        try:
            return json.loads(open(self.summary_file).read().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}

    def running(self):
        return self.p.poll() is None

    def ids(self):
        return read_ids(self.idsfile)

    def count(self):
        return len(self.ids())


class RssSampler:
    """Samples VmRSS/VmHWM of the current forwarder every 200 ms."""

    def __init__(self):
        self.pid = None
        self.max_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def track(self, pid):
        self.pid = pid
        self.sample()

    def sample(self):
        pid = self.pid
        if not pid:
            return
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        self.max_kb = max(self.max_kb, int(line.split()[1]))
            self.samples += 1
        except (OSError, ValueError):
            pass

    def _run(self):
        while not self._stop.wait(0.2):
            self.sample()

    def stop(self):
        self._stop.set()

    @property
    def max_mb(self):
        return self.max_kb / 1024


class Forwarder:
    def __init__(self, sc, host, port, ns=None, proxy=None, out_extra=None, top_extra=None):
        self.sc = sc
        self.ns = ns
        self.http_port = free_port() if not ns else 9090
        self.logpath = os.path.join(sc.dir, "forwarder.log")
        self.cfg = os.path.join(sc.dir, "forwarder.toml")
        top = {"log_level": "info", "http_listen": f"127.0.0.1:{self.http_port}", "state_dir": sc.state_dir,
               "shutdown_timeout": "30s"}
        top.update(top_extra or {})
        out = {"name": "default", "host": host, "port": port, "retry_min": "50ms", "retry_max": "1s",
               "connect_timeout": "2s", "ack_timeout": "10s", "checkpoint_interval": "100ms"}
        out.update(out_extra or {})
        tables = [("[tail]", {"path": sc.audit_log, "poll_interval": "50ms", "start_at": "oldest"}),
                  ("[[outputs]]", out)]
        if proxy:
            tables.append(("[outputs.proxy]", proxy))
        with open(self.cfg, "w") as f:
            f.write(render_toml(top, tables))
        r = subprocess.run([sc.suite.bin, "check", "--config", self.cfg], capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail(f"`audit-forwarder check --config {self.cfg}` failed: {r.stdout}{r.stderr}")
        self.proc = None
        self.starts = 0
        self.log_start = 0
        sc.forwarder = self

    def start(self, wait=True):
        if self.proc and self.proc.alive():
            raise Fail("forwarder already running")
        self.log_start = log_size(self.logpath)
        self.proc = Proc("forwarder", [self.sc.suite.bin, "forward", "--config", self.cfg], self.logpath, ns=self.ns)
        self.starts += 1
        self.sc.rss.track(self.proc.pid)
        if wait:
            wait_for(lambda: self._healthy(), 30, "the forwarder's /healthz")
        return self

    def _healthy(self):
        if not self.proc.alive():
            raise Fail(f"forwarder exited {self.proc.p.returncode} at start:\n{tail_text(self.logpath)}")
        try:
            self.http("/healthz")
            return True
        except (OSError, Fail):
            return False

    def http(self, path):
        url = f"http://127.0.0.1:{self.http_port}{path}"
        if self.ns:
            code = "import sys,urllib.request;sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())"
            r = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", code, url],
                               capture_output=True, text=True, timeout=15)
            if r.returncode != 0:
                raise Fail(f"GET {url} in {self.ns}: {r.stderr.strip()[-200:]}")
            return r.stdout
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def metrics(self):
        """{(name, frozenset(labels)): value} of the running process."""
        out = {}
        for line in self.http("/metrics").splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', line)
            if not m:
                continue
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            try:
                out[(m.group(1), labels)] = float(m.group(3))
            except ValueError:
                pass
        return out

    def metric(self, name, m=None, **labels):
        """Sum of the series of audit_forwarder_<name> (with these labels)."""
        m = self.metrics() if m is None else m
        full = "audit_forwarder_" + name
        want = set(labels.items())
        return sum(v for (n, ls), v in m.items() if n == full and want <= set(ls))

    def log_since_start(self):
        return read_log(self.logpath, self.log_start)

    def kill(self):
        self.proc.kill()

    def stop(self, timeout=60):
        rc = self.proc.stop(timeout)
        return rc

    def alive(self):
        return self.proc is not None and self.proc.alive()


class Receiver:
    def __init__(self, sc, host="127.0.0.1", port=None, ns=None):
        self.sc = sc
        self.host = host
        self.port = port or free_port()
        self.ns = ns
        self.logpath = os.path.join(sc.dir, "receiver.log")
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        out = os.path.join(self.sc.outdir, f"out-{self.starts:03d}.jsonl")
        start = log_size(self.logpath)
        # receive.state_dir: what was written per sender stream survives the
        # receiver's restarts (exactly once; a write cut short is undone).
        state = os.path.join(self.sc.dir, "receiver-state")
        self.proc = Proc("receiver", [self.sc.suite.bin, "receive", "--listen", f"{self.host}:{self.port}",
                                      "--output", out, "--set", f'receive.state_dir="{state}"'],
                         self.logpath, ns=self.ns)

        def up():
            if not self.proc.alive():
                raise Fail(f"receiver exited {self.proc.p.returncode} at start:\n{tail_text(self.logpath)}")
            return "receiver listening" in read_log(self.logpath, start)
        wait_for(up, 30, "the receiver to listen")
        return self

    def kill(self):
        self.proc.kill()

    def stop(self):
        return self.proc.stop(30)


def forwarder_stop_check(sc, fwd):
    rc = fwd.stop()
    sc.check(rc == 0, f"forwarder exits 0 on SIGTERM (exit {rc})")


# --------------------------------------------------------------------------
# scenarios


def sc_kill_forwarder(sc):
    kills = 50
    rate = 300 if sc.short else 600
    up = (0.05, 0.5) if sc.short else (0.05, 0.9)
    rcv = Receiver(sc).start()
    fwd = Forwarder(sc, "127.0.0.1", rcv.port)
    w = sc.writer("main", rate=rate, duration=600, max_size="2MB", burst=rate * 2, burst_every=2.5,
                  big_every=3000, big_bytes="3MB")
    early_exit = []
    mid_stream = 0
    for i in range(kills):
        n0 = sc.received.poll().lines
        fwd.start(wait=False)
        sc.sleep(*up)
        if not fwd.alive():
            early_exit.append(f"start {i + 1}: exit {fwd.proc.p.returncode}")
        fwd.kill()
        if sc.received.poll().lines > n0:
            mid_stream += 1
        sc.sleep(0, 0.2)
    log(f"  {kills} SIGKILLs done, {mid_stream} of them after the incarnation had delivered events; "
        f"{w.count()} events written so far")
    sc.check(mid_stream >= kills // 2, f"at least half of the kills hit a forwarder that was delivering ({mid_stream})")
    fwd.start()
    w.stop()
    sc.check(not early_exit, f"no forwarder incarnation exited by itself before its SIGKILL {early_exit[:3]}")
    text = read_log(fwd.logpath)
    bad_cp = [line for line in text.splitlines() if "checkpoint" in line.lower() and ("ERROR" in line or "WARN" in line)]
    sc.check(not bad_cp, f"no checkpoint error or warning in {fwd.starts} starts {bad_cp[:2]}")
    sc.finish(w.ids(), 120 if sc.short else 240)
    m = fwd.metrics()
    sc.note(f"last incarnation: resent chunks {fwd.metric('chunks_resent_total', m):.0f}, "
            f"gaps {fwd.metric('gaps_total', m):.0f}, truncations {fwd.metric('truncations_total', m):.0f}")
    sc.check(fwd.metric("gaps_total", m) == 0, "no gap reported (no file was deleted)")
    forwarder_stop_check(sc, fwd)
    rcv.stop()
    sc.check(sc.duplicates == 0, f"no duplicates: what each restart re-reads after the last checkpoint is "
             f"recognised by stream and source offset ({sc.duplicates})")
    sc.dup_why = "none expected: resent events carry their stream and source offsets; the receiver drops repeats"


def sc_kill_receiver(sc):
    kills = 25
    up = (0.3, 1.2) if sc.short else (0.5, 2.5)
    rate = 400 if sc.short else 800
    rcv = Receiver(sc).start()
    fwd = Forwarder(sc, "127.0.0.1", rcv.port).start()
    w = sc.writer("main", rate=rate, duration=600, max_size="2MB", burst=rate * 2, burst_every=2.0,
                  big_every=4000, big_bytes="3MB")
    for i in range(kills):
        sc.sleep(*up)
        rcv.kill()
        sc.sleep(0.05, 1.0)
        rcv.start()
    w.stop()
    sc.finish(w.ids(), 120 if sc.short else 240)
    m = fwd.metrics()
    rec = fwd.metric("reconnects_total", m) + fwd.metric("connect_errors_total", m)
    sc.check(rec > 0, f"forwarder saw the receiver go away: reconnects+connect errors = {rec:.0f}")
    sc.note(f"chunks resent {fwd.metric('chunks_resent_total', m):.0f}")
    forwarder_stop_check(sc, fwd)
    rcv.stop()
    sc.check(sc.duplicates == 0, f"no duplicates across {kills} receiver SIGKILLs: the record of what was written "
             f"is kept in receive.state_dir, a write cut short is undone at start ({sc.duplicates})")
    sc.dup_why = "none expected: receive.state_dir keeps what was written per stream"


def sc_kill_both(sc):
    """The forwarder and the receiver SIGKILLed alternately, 25 times each."""
    kills = 25
    rate = 300 if sc.short else 600
    rcv = Receiver(sc).start()
    fwd = Forwarder(sc, "127.0.0.1", rcv.port).start()
    w = sc.writer("main", rate=rate, duration=600, max_size="2MB", burst=rate * 2, burst_every=2.5,
                  big_every=3000, big_bytes="3MB")
    for i in range(kills):
        sc.sleep(0.2, 0.8)
        fwd.kill()
        sc.sleep(0, 0.3)
        fwd.start(wait=False)
        sc.sleep(0.2, 0.8)
        rcv.kill()
        sc.sleep(0.05, 0.5)
        rcv.start()
    log(f"  {kills} forwarder and {kills} receiver SIGKILLs done; {w.count()} events written so far")
    w.stop()
    sc.finish(w.ids(), 120 if sc.short else 240)
    forwarder_stop_check(sc, fwd)
    rcv.stop()
    sc.check(sc.duplicates == 0, f"no duplicates after {kills} SIGKILLs of each side, alternately ({sc.duplicates})")
    sc.dup_why = "none expected: stream and source offsets, and receive.state_dir"


TINYPROXY_CONF = "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 64\nLogLevel Info\n"


def sc_proxy(sc):
    kills = 3 if sc.short else 6
    up = (0.5, 1.5) if sc.short else (1.0, 3.0)
    bad = 3.0 if sc.short else 8.0
    rate = 400 if sc.short else 800
    pport = free_port()
    conf = os.path.join(sc.dir, "tinyproxy.conf")
    with open(conf, "w") as f:
        f.write(TINYPROXY_CONF.format(port=pport))
    plog = os.path.join(sc.dir, "proxy.log")

    def tinyproxy():
        p = Proc("tinyproxy", ["tinyproxy", "-d", "-c", conf], plog)
        wait_for(lambda: port_open(pport) or (not p.alive() and fail_proc(p, plog)), 20, "tinyproxy to listen")
        return p

    rcv = Receiver(sc).start()
    proxy = tinyproxy()
    fwd = Forwarder(sc, "127.0.0.1", rcv.port, proxy={"url": f"http://127.0.0.1:{pport}"}).start()
    w = sc.writer("main", rate=rate, duration=600, max_size="2MB", burst=rate * 2, burst_every=2.0,
                  big_every=4000, big_bytes="3MB")
    for i in range(kills):
        sc.sleep(*up)
        proxy.kill()
        sc.sleep(0.1, 1.0)
        proxy = tinyproxy()
    sc.sleep(*up)
    proxy.kill()
    # 502 phase: the tiny Python proxy refuses every CONNECT for `bad` seconds, then relays.
    n0 = sc.received.poll().lines
    refused0 = fwd.metric("connect_errors_total", reason="proxy_refused")
    p502 = Proc("connect502", [sys.executable, PROXY502, "--port", str(pport), "--bad-seconds", str(bad)],
                os.path.join(sc.dir, "connect502.log"))
    wait_for(lambda: "listening" in read_log(p502.logpath), 20, "the 502 proxy to listen")
    wait_for(lambda: fwd.metric("connect_errors_total", reason="proxy_refused") > refused0, bad + 10,
             "connect_errors_total{reason=proxy_refused} to rise during the 502 phase")
    wait_for(lambda: "relay " in read_log(p502.logpath), bad + 30, "the forwarder through the relaying proxy")
    wait_for(lambda: sc.received.poll().lines > n0, 30, "events through the relaying Python proxy")
    sc.sleep(*up)
    p502.kill()
    proxy = tinyproxy()
    sc.sleep(*up)
    w.stop()
    sc.finish(w.ids(), 120 if sc.short else 240)
    m = fwd.metrics()
    refused = fwd.metric("connect_errors_total", m, reason="proxy_refused")
    n502 = read_log(p502.logpath).count("502 ")
    sc.check(refused >= 1 and n502 >= 1, f"502 answers {n502}, counted as connect_errors_total{{reason=\"proxy_refused\"}} = {refused:.0f}")
    l502 = [ln for ln in read_log(fwd.logpath).splitlines() if "502" in ln]
    sc.note("forwarder log: " + (l502[0].strip()[:220] if l502 else
            "no line names the 502 (the retry warning was rate-limited: one per 10 s per cause)"))
    sc.note(f"reconnects {fwd.metric('reconnects_total', m):.0f}, connect errors {fwd.metric('connect_errors_total', m):.0f}, "
            f"chunks resent {fwd.metric('chunks_resent_total', m):.0f}, receiver dedupe hits: see receiver")
    forwarder_stop_check(sc, fwd)
    proxy.kill()
    rcv.stop()
    sc.check(sc.duplicates == 0, f"no duplicates: resent chunks keep their chunk id and the one receiver drops them ({sc.duplicates})")
    sc.dup_why = "none expected: chunks resent after a proxy kill keep their id; the receiver (never restarted) drops repeats"


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def fail_proc(p, logpath):
    raise Fail(f"{p.name} exited {p.p.returncode}:\n{tail_text(logpath)}")


def sh(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode != 0:
        raise Fail(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def sc_network(sc):
    tag = f"{os.getpid() % 100000}"
    nsf, nsr = f"afflt-f{tag}", f"afflt-r{tag}"
    for ns in (nsf, nsr):
        sh("ip", "netns", "add", ns)
        REG.add_netns(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "veth0", "netns", nsf, "type", "veth", "peer", "name", "veth0", "netns", nsr)
    sh("ip", "-n", nsf, "addr", "add", "10.231.0.1/24", "dev", "veth0")
    sh("ip", "-n", nsr, "addr", "add", "10.231.0.2/24", "dev", "veth0")
    sh("ip", "-n", nsf, "link", "set", "veth0", "up")
    sh("ip", "-n", nsr, "link", "set", "veth0", "up")
    clean = 2 if sc.short else 4
    netem_secs = 8 if sc.short else 20
    down_secs = 3 if sc.short else 5
    after_up = 4 if sc.short else 8
    rate = 100 if sc.short else 150
    rcv = Receiver(sc, host="10.231.0.2", port=24224, ns=nsr).start()
    fwd = Forwarder(sc, "10.231.0.2", 24224, ns=nsf, out_extra={"ack_timeout": "15s"}).start()
    w = sc.writer("main", rate=rate, duration=600, max_size="1MB", burst=rate, burst_every=3.0,
                  rr_fraction=0.01, big_every=0)
    time.sleep(clean)  # a phase length, not a synchronisation
    impair = Impairment(sc, nsf, "veth0", delay_ms=100, loss_pct=10)
    n0 = sc.received.poll().lines
    time.sleep(netem_secs)
    n1 = sc.received.poll().lines
    sc.check(n1 > n0, f"events flowed under delay+loss: {n1 - n0} in {netem_secs}s")
    sh("ip", "-n", nsf, "link", "set", "veth0", "down")
    log(f"  link down for {down_secs}s")
    time.sleep(down_secs)
    sh("ip", "-n", nsf, "link", "set", "veth0", "up")
    log("  link up")
    n2 = sc.received.poll().lines
    wait_for(lambda: sc.received.poll().lines > n2, 60, "events after the link came back (netem still on)", every=0.2)
    time.sleep(after_up)
    impair.remove()
    w.stop()
    sc.finish(w.ids(), 120 if sc.short else 240)
    m = fwd.metrics()
    sc.note(f"reconnects {fwd.metric('reconnects_total', m):.0f}, chunks resent {fwd.metric('chunks_resent_total', m):.0f}")
    forwarder_stop_check(sc, fwd)
    rcv.stop()
    sc.check(sc.duplicates == 0, f"no duplicates across reconnects (same receiver, chunk ids kept): {sc.duplicates}")
    sc.dup_why = "none expected: resends after timeouts keep their chunk id and the receiver drops repeats"


class Impairment:
    """`tc qdisc add dev DEV root netem delay D loss L` in namespace ns; where
    the kernel has no sch_netem ("Specified qdisc kind is unknown"), the same
    in user space: an iptables NFQUEUE rule on the device's egress and
    netimpair.py delaying and dropping the queued packets."""

    def __init__(self, sc, ns, dev, delay_ms, loss_pct):
        self.sc, self.ns, self.dev = sc, ns, dev
        self.proc = None
        r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                            "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"], capture_output=True, text=True)
        if r.returncode == 0:
            self.kind = "netem"
            log(f"  tc netem delay {delay_ms}ms loss {loss_pct}% on the forwarder's {dev}")
            return
        if "unknown" not in r.stderr or not shutil.which("iptables"):
            raise Fail(f"tc netem failed ({r.stderr.strip()}) and iptables for the NFQUEUE fallback is "
                       "not installed (apt-get install iptables)")
        self.kind = "nfqueue"
        self.proc = Proc("netimpair", [sys.executable, NETIMPAIR, "--queue", "0", "--delay", str(delay_ms / 1000),
                                       "--loss", str(loss_pct / 100), "--seed", str(sc.rng.randrange(1 << 30))],
                         os.path.join(sc.dir, "netimpair.log"), ns=ns)
        wait_for(lambda: "bound" in read_log(self.proc.logpath) or (not self.proc.alive() and
                 fail_proc(self.proc, self.proc.logpath)), 20, "netimpair.py to bind its queue")
        self.rule = ["OUTPUT", "-o", dev, "-j", "NFQUEUE", "--queue-num", "0"]
        sh("ip", "netns", "exec", ns, "iptables", "-A", *self.rule)
        self.sc.note(f"this kernel has no sch_netem ({r.stderr.strip()}): delay {delay_ms}ms loss {loss_pct}% "
                     f"emulated by iptables NFQUEUE on {dev} egress + scripts/faults/netimpair.py")

    def remove(self):
        if self.kind == "netem":
            sh("ip", "netns", "exec", self.ns, "tc", "qdisc", "del", "dev", self.dev, "root")
            log("  netem removed")
            return
        sh("ip", "netns", "exec", self.ns, "iptables", "-D", *self.rule)
        self.proc.stop(10)
        stats = read_log(self.proc.logpath).strip().splitlines()[-1]
        log(f"  impairment removed; netimpair.py: {stats}")


def heads(logdir):
    """Identities of the audit log files (their first line: auditIDs are unique), whatever their name."""
    out = set()
    for p in glob.glob(os.path.join(logdir, "audit*.log*")):
        try:
            with open(p, "rb") as f:
                out.add(f.readline())
        except FileNotFoundError:
            pass
    return out - {b""}


def sc_rotation_storm(sc):
    maxb = 10
    rate = 2000
    storm_secs = 5 if sc.short else 12
    kw = dict(max_size="100KB", max_backup=maxb, rr_fraction=0.0, request_received=0.05, big_every=0)
    rcv = Receiver(sc).start()
    fwd = Forwarder(sc, "127.0.0.1", rcv.port).start()
    def storm(name, label, **wkw):
        """One storm with the forwarder up: every event written must arrive."""
        w = sc.writer(name, rate=rate, duration=storm_secs, burst=200, burst_every=1.0, **wkw)
        st = w.wait()
        log(f"  storm {label}: {st.get('written')} events, {st.get('rotations')} rotations, {st.get('deleted', 0)} deleted")
        ids = w.ids()
        lost = sc.wait_received(ids, 60, f"storm {label.split()[0]}")
        sc.check(not lost, f"{label}: {len(lost)} of {len(ids)} events lost during the storm")
        if lost:
            sc.explain_missing(lost)
        return ids

    # Phase 0: the same storm keeping every rotated file (nothing deleted): whatever is
    # missing here is in a file still on disk.
    ids0 = storm("keep", "0 (forwarder up, no deletion)", **dict(kw, max_backup=0))
    # Phase 1: the forwarder is up; the storm rotates every 100 KB and deletes beyond maxbackup.
    ids1 = storm("up1", "1 (forwarder up)", **kw)
    m = fwd.metrics()
    sc.check(fwd.metric("gaps_total", m) == 0, f"no gap while up (gaps_total {fwd.metric('gaps_total', m):.0f})")
    forwarder_stop_check(sc, fwd)
    cp = json.load(open(os.path.join(sc.state_dir, "checkpoint-default.json")))
    before = heads(sc.logdir)
    # Phase 2: forwarder down; keep writing until every file it knew is deleted.
    w2 = sc.writer("down", rate=rate, duration=60, **kw)
    wait_for(lambda: not (before & heads(sc.logdir)), 50, "every file of the stopped forwarder's time deleted")
    time.sleep(0.3)  # a little more written after the deletion (not a synchronisation)
    s2 = w2.stop()
    log(f"  writing while down: {s2.get('written')} events, {s2.get('rotations')} rotations, {s2.get('deleted')} deleted")
    on_disk = ids_on_disk(sc.logdir)
    ids2 = w2.ids()
    deleted = [i for i in ids2 if i not in on_disk]
    sc.check(deleted, f"{len(deleted)} events written while down are in deleted files")
    # Phase 3: restart; the checkpointed file is gone.
    fwd.start()
    wait_for(lambda: "DATA GAP" in fwd.log_since_start(), 20, "the DATA GAP log line")
    gline = [ln for ln in fwd.log_since_start().splitlines() if "DATA GAP" in ln]
    sc.check(gline and "ERROR" in gline[0] and f"offset={cp['offset']}" in gline[0],
             f"DATA GAP logged at ERROR with the checkpoint's offset {cp['offset']}: {gline[0].strip()[:160] if gline else None}")
    g = fwd.metric("gaps_total")
    sc.check(g == 1, f"audit_forwarder_gaps_total = {g:.0f} (via /metrics)")
    kept2 = [i for i in ids2 if i in on_disk]
    lost = sc.wait_received(kept2, 60, "events of files still present after the restart")
    sc.check(not lost, f"after the restart: {len(lost)} of {len(kept2)} events of surviving files missing")
    # Phase 4: storm again with the restarted forwarder up.
    w3 = sc.writer("up2", rate=rate, duration=storm_secs, burst=200, burst_every=1.0, **kw)
    w3.wait()
    ids = ids0 + ids1 + ids2 + w3.ids()
    sc.finish(ids, 60, gap_ok=frozenset(deleted))
    sc.check(fwd.metric("gaps_total") == 1, "no further gap while up after the restart")
    forwarder_stop_check(sc, fwd)
    rcv.stop()
    sc.dup_why = "none expected: SIGTERM waits for the acks and writes the final checkpoint"
    sc.check(sc.duplicates == 0, f"no duplicates ({sc.duplicates})")


def sc_state_full(sc):
    rate = 300 if sc.short else 600
    full_secs = 4 if sc.short else 10
    sh("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", sc.state_dir)
    REG.add_mount(sc.state_dir)
    try:
        rcv = Receiver(sc).start()
        fwd = Forwarder(sc, "127.0.0.1", rcv.port).start()
        w = sc.writer("main", rate=rate, duration=600, max_size="2MB", burst=rate, burst_every=2.0,
                      big_every=4000, big_bytes="2MB")
        cpf = os.path.join(sc.state_dir, "checkpoint-default.json")
        wait_for(lambda: os.path.exists(cpf), 20, "the first checkpoint")
        filler = os.path.join(sc.state_dir, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(1024):
                os.write(fd, b"\0" * 4096)
            raise Fail("the 256k tmpfs did not fill up")
        except OSError as e:
            log(f"  state_dir filled: {os.path.getsize(filler)} bytes of filler ({e.strerror})")
        finally:
            os.close(fd)
        f0 = fwd.metric("checkpoint_failures_total")
        wait_for(lambda: fwd.metric("checkpoint_failures_total") >= f0 + 1, 20, "a checkpoint failure to be counted")
        cp_full = open(cpf).read()
        n0 = sc.received.poll().lines
        wait_for(lambda: fwd.metric("checkpoint_failures_total") >= f0 + 3, 20, "checkpoint failures to be counted")
        time.sleep(full_secs)  # phase length
        n1 = sc.received.poll().lines
        sc.check(n1 > n0, f"forwarding goes on while the state dir is full: {n1 - n0} events")
        fails = fwd.metric("checkpoint_failures_total")
        sc.check(fails >= 3, f"checkpoint_failures_total = {fails:.0f} while full")
        sc.check(open(cpf).read() == cp_full, "the last good checkpoint is intact while full")
        lines = [ln for ln in fwd.log_since_start().splitlines() if "checkpoint write failed" in ln]
        sc.check(lines, f"log: {lines[0].strip()[:200] if lines else 'no checkpoint failure logged'}")
        leftovers = sorted(set(os.listdir(sc.state_dir)) - {"filler", "checkpoint-default.json", "stream-default.id"})
        sc.check(not leftovers, f"no temp files left behind by the failed writes {leftovers}")
        if not sc.short:
            # A crash while full: the restart resumes from the last good checkpoint.
            fwd.kill()
            fwd.start()
            n2 = sc.received.poll().lines
            wait_for(lambda: sc.received.poll().lines > n2, 30, "forwarding after a restart with a full state dir")
            wait_for(lambda: fwd.metric("checkpoint_failures_total") >= 1, 20, "failures after the restart")
            sc.check(True, "restarted (SIGKILL) while full: starts, forwards, counts failures")
        os.remove(filler)
        writes0 = fwd.metric("checkpoint_writes_total")
        wait_for(lambda: fwd.metric("checkpoint_writes_total") > writes0, 20, "a checkpoint write after the space came back")
        wait_for(lambda: open(cpf).read() != cp_full, 20, "the checkpoint to move on")
        sc.check(True, "checkpoint written again once space is back (retried)")
        w.stop()
        sc.finish(w.ids(), 120 if sc.short else 240)
        m = fwd.metrics()
        sc.note(f"checkpoint writes {fwd.metric('checkpoint_writes_total', m):.0f}, failures {fwd.metric('checkpoint_failures_total', m):.0f} (last incarnation)")
        forwarder_stop_check(sc, fwd)
        rcv.stop()
        sc.dup_why = ("re-read after the SIGKILL while full: resumed from the last checkpoint written before the disk "
                      "filled up" if not sc.short else "none expected (no crash in --short)")
    finally:
        REG.cleanup()  # every process, then the tmpfs
        sc.check(subprocess.run(["mountpoint", "-q", sc.state_dir]).returncode != 0, "tmpfs unmounted")


def sc_slow_receiver(sc):
    rate = 2500 if sc.short else 4000
    secs = 10 if sc.short else 30
    big = 3 * MB
    rcv = Receiver(sc).start()
    fwd = Forwarder(sc, "127.0.0.1", rcv.port, out_extra={"ack_timeout": "5s"}).start()
    w = sc.writer("main", rate=rate, duration=600, max_size="8MB", burst=rate, burst_every=2.0,
                  big_every=rate * 2, big_bytes=str(big))
    t_end = time.monotonic() + secs
    stops = 0
    long_done = sc.short
    while time.monotonic() < t_end:
        rcv.proc.signal(signal.SIGSTOP)
        stops += 1
        if not long_done and time.monotonic() > t_end - secs / 2:
            time.sleep(8)  # longer than ack_timeout: the forwarder reconnects and resends
            long_done = True
        else:
            sc.sleep(1.0, 2.0)
        rcv.proc.signal(signal.SIGCONT)
        sc.sleep(0.2, 0.5)
    log(f"  {stops} SIGSTOP/SIGCONT cycles; {w.count()} events written")
    w.stop()
    m = fwd.metrics()
    bufmax = fwd.metric("buffered_bytes_max", m)
    sc.finish(w.ids(), 180 if sc.short else 300)
    ev = big * 1.2  # a --big-bytes event is ~15 % larger as a JSON line
    bound = 7 * max(MB, ev)
    sc.check(bufmax <= bound, f"buffered_bytes_max {bufmax / MB:.1f} MiB <= (max_in_flight 4 + max_pending_chunks 2 + 1) "
             f"x max(max_batch_bytes, largest event) = {bound / MB:.1f} MiB")
    if bufmax > 7 * MB + ev:
        sc.note(f"buffered_bytes_max {bufmax / MB:.1f} MiB exceeds the README's bound \"(4+2+1) x max_batch_bytes plus "
                f"one event larger than a batch\" = {(7 * MB + ev) / MB:.1f} MiB: several large events were buffered at once")
    sc.check(sc.rss.max_mb <= 100, f"max RSS {sc.rss.max_mb:.1f} MB <= 100 MB ({sc.rss.samples} samples every 200 ms)")
    m = fwd.metrics()
    sc.note(f"ack timeouts/reconnects {fwd.metric('reconnects_total', m):.0f}, chunks resent {fwd.metric('chunks_resent_total', m):.0f}")
    forwarder_stop_check(sc, fwd)
    rcv.stop()
    sc.check(sc.duplicates == 0, f"no duplicates: chunks resent after an ack timeout keep their id ({sc.duplicates})")
    sc.dup_why = "none expected: resends after an ack timeout keep their chunk id; the receiver drops repeats"


FUNCS = {1: sc_kill_forwarder, 2: sc_kill_receiver, 3: sc_proxy, 4: sc_network, 5: sc_rotation_storm,
         6: sc_state_full, 7: sc_slow_receiver, 8: sc_kill_both}


# --------------------------------------------------------------------------


class Suite:
    def __init__(self, a):
        self.short = a.short
        self.seed = a.seed
        self.bin = af_bin()
        self.workdir = a.workdir or tempfile.mkdtemp(prefix="af-faults.")
        os.makedirs(self.workdir, exist_ok=True)


def table(results):
    rows = ["| scenario | written | received | missing | duplicates | reported gap | max RSS | time | result |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rows.append(f"| {r['num']} {r['name']} | {r['written']} | {r['received']} | {r['missing']} | "
                    f"{r['duplicates']} | {r['gap']} | {r['max_rss_mb']:.1f} MB | {r['seconds']:.0f} s | "
                    f"{'PASS' if r['ok'] else 'FAIL'} |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="reduced form for CI (under ~4 minutes)")
    p.add_argument("--seed", type=int, default=None, help="random seed (kill moments, writer content)")
    p.add_argument("--workdir", help="where logs and outputs go (default: a new /tmp/af-faults.*)")
    p.add_argument("--keep", action="store_true", help="keep the work dir also when everything passed")
    p.add_argument("--registry", default=os.environ.get("AF_FAULTS_REGISTRY"),
                   help="file listing started processes / namespaces / mounts (for run.sh's trap)")
    p.add_argument("--cleanup", metavar="REGISTRY", help="only undo what REGISTRY lists, then exit")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="numbers or names (default: all)")
    a = p.parse_args()
    if a.cleanup:
        return cleanup_from_file(a.cleanup)

    chosen = []
    for s in a.scenarios:
        hit = [x for x in SCENARIOS if s == str(x[0]) or s == x[1]]
        if not hit:
            p.error(f"unknown scenario {s!r}; one of " + ", ".join(f"{n} {name}" for n, name, _ in SCENARIOS))
        chosen.extend(h for h in hit if h not in chosen)
    chosen = chosen or SCENARIOS
    if os.geteuid() != 0 and any(n in (4, 6) for n, _, _ in chosen):
        print("faults: scenarios 4 and 6 need root (ip netns, mount -t tmpfs)", file=sys.stderr)
        return 2
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 31)
    suite = Suite(a)
    if not os.access(suite.bin, os.X_OK):
        print(f"faults: AF_BIN {suite.bin} is not executable", file=sys.stderr)
        return 2
    for tool, needed in (("tinyproxy", 3), ("ip", 4), ("tc", 4)):
        if any(n == needed for n, _, _ in chosen) and not shutil.which(tool):
            print(f"faults: {tool} not found (scenario {needed})", file=sys.stderr)
            return 2
    global REG
    REG = Registry(a.registry)

    def on_term(signum, frame):  # noqa: ARG001
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    log(f"audit-forwarder fault suite: {'short' if a.short else 'full'}, seed {a.seed}, binary {suite.bin}, "
        f"work dir {suite.workdir}")
    t_all = time.monotonic()
    results = []
    interrupted = False
    for num, name, title in chosen:
        log(f"=== scenario {num} {name}: {title}")
        t0 = time.monotonic()
        sc = Scenario(suite, num, name, title)
        try:
            FUNCS[num](sc)
        except Fail as e:
            sc.check(False, f"aborted: {e}")
        except Interrupted as e:
            sc.check(False, f"interrupted ({e})")
            interrupted = True
        except Exception as e:  # noqa: BLE001 (report, clean up, go on)
            import traceback
            traceback.print_exc()
            sc.check(False, f"error: {type(e).__name__}: {e}")
        finally:
            sc.cleanup()
        if not sc.written:
            sc.written = len(sc.written_ids())
        r = {"num": num, "name": name, "written": sc.written, "received": sc.received.lines,
             "missing": sc.missing, "duplicates": sc.duplicates, "gap": sc.gap, "max_rss_mb": sc.rss.max_mb,
             "seconds": time.monotonic() - t0, "ok": sc.ok(), "dup_why": sc.dup_why,
             "failed": [t for ok, t in sc.checks if not ok], "notes": sc.notes}
        results.append(r)
        if r["ok"] and not a.keep:
            shutil.rmtree(sc.dir, ignore_errors=True)  # several GB in the full form; kept when it failed
        log(f"--- scenario {num} {name}: written {r['written']}, received {r['received']} "
            f"(distinct {len(sc.received.counts)}), missing {r['missing']}, duplicates {r['duplicates']}"
            + (f" (why: {sc.dup_why})" if r['duplicates'] else "")
            + (f", reported gap {r['gap']}" if r['gap'] else "")
            + f", max RSS {r['max_rss_mb']:.1f} MB, {r['seconds']:.0f} s: {'PASS' if r['ok'] else 'FAIL'}")
        if interrupted:
            break
    total = time.monotonic() - t_all
    md = table(results)
    print()
    print(f"## audit-forwarder fault suite ({'short' if a.short else 'full'}, seed {a.seed}, {total:.0f} s)")
    print()
    print(md)
    print()
    for r in results:
        if r["duplicates"]:
            print(f"- {r['num']} {r['name']}: {r['duplicates']} duplicates: {r['dup_why']}")
    for r in results:
        if r["failed"]:
            print(f"- {r['num']} {r['name']} FAILED: " + "; ".join(r["failed"]))
    with open(os.path.join(suite.workdir, "summary.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(suite.workdir, "summary.json"), "w") as f:
        json.dump({"short": a.short, "seed": a.seed, "seconds": total, "results": results}, f, indent=1)
    ok = all(r["ok"] for r in results) and not interrupted
    if ok and not a.keep and not a.workdir:
        shutil.rmtree(suite.workdir, ignore_errors=True)
        print(f"(work dir removed; --keep keeps it)")
    else:
        print(f"logs and outputs: {suite.workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        REG.cleanup()
