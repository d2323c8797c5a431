#!/usr/bin/env python3
"""Long soak: the release forwarder and receiver on loopback for --minutes
(default 30) while scripts/audit-writer.py writes --rate events/s (default
5,000) with apiserver-like rotation (50 MB files, 5 backups, so the disk use
stays bounded). Every 10 s it samples both processes' RSS and open file
descriptors and the forwarder's lag; at the end it checks that

  * every written event was acknowledged (audit_forwarder_events_acked_total
    equals the writer's count; the receiver writes to /dev/null),
  * RSS and FD count stayed flat: the maximum of the last third of the run is
    at most 10 % (RSS) / 5 descriptors above the maximum of the first third
    after a one-minute warm-up.

Samples go to target/soak/samples.csv. Not part of CI (it takes its time).

    python3 scripts/soak.py [--minutes 30] [--rate 5000] [--set KEY=VALUE ...]

`--set` is passed to the forwarder, e.g. `--set output.policy='"recommended"'
--set output.filters='[{ wasm = "example-filters/target/wasm32-wasip2/release/add_cluster_id.wasm", config = { cluster = "c1" } }]'`.
"""
import argparse, csv, json, os, re, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmRSS:\s+(\d+)", f.read())
    return int(m.group(1)) if m else 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        k, _, v = line.rpartition(" ")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def listen_port(log_path, needle, deadline):
    while time.time() < deadline:
        with open(log_path) as f:
            for line in f:
                if needle in line:
                    return int(json.loads(line)["fields"]["listen"].rsplit(":", 1)[1])
        time.sleep(0.1)
    sys.exit(f"no {needle!r} in {log_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a forwarder configuration override (repeatable)")
    a = ap.parse_args()
    binary = os.environ.get("AF_BIN", os.path.join(ROOT, "target/release/audit-forwarder"))
    if "AF_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    out_dir = os.path.join(ROOT, "target/soak")
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="af-soak-")
    procs = []

    def stop_all(*_):
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        logs = {n: open(os.path.join(out_dir, f"{n}.log"), "w") for n in ("receiver", "forwarder")}
        rcv = subprocess.Popen([binary, "--log-format", "json", "receive", "--listen", "127.0.0.1:0",
                                "--output", "null"], stderr=logs["receiver"], stdout=subprocess.DEVNULL)
        procs.append(rcv)
        rport = listen_port(logs["receiver"].name, "receiver listening", time.time() + 30)
        log = os.path.join(work, "audit.log")
        open(log, "a").close()
        fwd = subprocess.Popen([binary, "--log-format", "json", "forward", "--path", log,
                                "--state-dir", os.path.join(work, "state"), "--port", str(rport),
                                "--set", 'http_listen="127.0.0.1:0"']
                               + [x for kv in a.set for x in ("--set", kv)],
                               stderr=logs["forwarder"], stdout=subprocess.DEVNULL)
        procs.append(fwd)
        mport = listen_port(logs["forwarder"].name, "http endpoint listening", time.time() + 30)
        ids = os.path.join(work, "ids")
        seconds = int(a.minutes * 60)
        writer = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts/audit-writer.py"),
                                   "--path", log, "--rate", str(a.rate), "--duration", str(seconds),
                                   "--max-size", str(50 << 20), "--max-backup", "5", "--ids", ids,
                                   "--seed", "7"], stdout=subprocess.PIPE)
        procs.append(writer)
        rows = []
        start = time.time()
        with open(os.path.join(out_dir, "samples.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "fwd_rss_kb", "fwd_fds", "rcv_rss_kb", "rcv_fds", "acked", "lag_bytes"])
            while writer.poll() is None and time.time() - start < seconds + 120:
                time.sleep(10)
                m = metrics(mport)
                row = [round(time.time() - start), rss_kb(fwd.pid), fds(fwd.pid), rss_kb(rcv.pid), fds(rcv.pid),
                       int(m.get('audit_forwarder_events_acked_total{output="default"}', 0)),
                       int(m.get('audit_forwarder_lag_bytes{output="default"}', 0))]
                rows.append(row)
                w.writerow(row)
                f.flush()
                print(" ".join(f"{k}={v}" for k, v in zip(["t", "fwd_rss_kb", "fwd_fds", "rcv_rss_kb", "rcv_fds", "acked", "lag"], row)), flush=True)
        summary = json.loads(writer.stdout.read().decode().strip().splitlines()[-1])
        written = sum(1 for _ in open(ids))
        deadline = time.time() + 120
        acked = 0
        while time.time() < deadline:
            acked = metrics(mport).get('audit_forwarder_events_acked_total{output="default"}', 0)
            if acked >= written:
                break
            time.sleep(1)
        ok = acked == written
        warm = [r for r in rows if r[0] >= 60] or rows
        third = max(1, len(warm) // 3)
        first, last = warm[:third], warm[-third:]
        verdicts = []
        for name, col, tol in (("forwarder RSS", 1, None), ("forwarder FDs", 2, 5), ("receiver RSS", 3, None), ("receiver FDs", 4, 5)):
            a0, a1 = max(r[col] for r in first), max(r[col] for r in last)
            flat = a1 <= (a0 * 1.10 if tol is None else a0 + tol)
            ok &= flat
            verdicts.append(f"{name}: first third max {a0}, last third max {a1} -> {'flat' if flat else 'GROWING'}")
        print(f"\nwriter: {json.dumps(summary)}")
        print(f"written {written}, acknowledged {int(acked)}, missing {written - int(acked)}")
        print("\n".join(verdicts))
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
