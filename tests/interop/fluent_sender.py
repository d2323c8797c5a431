#!/usr/bin/env python3
"""Reference Forward-protocol client for interop tests: the Python
``fluent-logger`` package (pinned in requirements.txt), ``FluentSender``.

Usage:
    python3 fluent_sender.py --port N [--host H] [--tag T]
                             [--time-field F] [--timeout SEC] FILE

Reads FILE as JSON lines (blank lines skipped) and emits each object as one
Message-mode event with tag ``audit`` and an EventTime timestamp
(``nanosecond_precision=True``). With ``--time-field F`` the time is taken
from the record's RFC 3339 field F (up to 9 fractional digits, kept exactly);
otherwise it is the current time (``time.time_ns()``).

stdout: ``SENT <n>`` when every event has been written to the socket; exit 0.
The library has no acks: SENT means "written", not "received".
On any failure: message on stderr, exit 1 (bad usage 2).
"""

import argparse
import calendar
import json
import os
import re
import sys

from fluent import sender as fluent_sender

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339_ns(value):
    if not isinstance(value, str):
        return None
    m = RFC3339.match(value)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    tz = m.group(8)
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    frac = (m.group(7) or "").ljust(9, "0")
    return secs * 10**9 + int(frac)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--port", type=int, default=os.environ.get("FLUENT_PORT"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tag", default="audit")
    ap.add_argument("--time-field", default=None)
    ap.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds (default 30)")
    args = ap.parse_args()
    if args.port is None:
        ap.error("--port (or FLUENT_PORT) is required")
    port = int(args.port)

    records = []
    try:
        with open(args.file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise SystemExit(f"fluent_sender.py: {args.file}:{n}: {e}")
                if not isinstance(obj, dict):
                    raise SystemExit(f"fluent_sender.py: {args.file}:{n}: not a JSON object")
                records.append(obj)
    except OSError as e:
        raise SystemExit(f"fluent_sender.py: {e}")

    dropped = []
    sender = fluent_sender.FluentSender(
        args.tag,
        host=args.host,
        port=port,
        timeout=args.timeout,
        nanosecond_precision=True,
        # Raise instead of silently sending a substitute "Can't output to log"
        # record when a record cannot be packed.
        forward_packet_error=False,
        # Called with the unsent bytes if close() cannot flush them.
        buffer_overflow_handler=dropped.append,
    )

    sent = 0
    try:
        for i, rec in enumerate(records, 1):
            ns = parse_rfc3339_ns(rec.get(args.time_field)) if args.time_field else None
            if ns is None:
                ok = sender.emit(None, rec)  # EventTime.from_unix_nano(time.time_ns())
            else:
                ok = sender.emit_with_time(None, fluent_sender.EventTime.from_unix_nano(ns), rec)
            if not ok:
                # A failed emit keeps the bytes in sender.pendings and retries
                # them with the next emit; for a test any failure is fatal.
                print(f"fluent_sender.py: emit of record {i} failed: {sender.last_error!r}", file=sys.stderr)
                return 1
            sent += 1
    except Exception as e:  # packing errors (forward_packet_error=False)
        print(f"fluent_sender.py: emit of record {sent + 1} raised: {e!r}", file=sys.stderr)
        return 1
    finally:
        sender.close()

    if dropped or sender.last_error is not None:
        print(f"fluent_sender.py: send failed: {sender.last_error!r}", file=sys.stderr)
        return 1
    print(f"SENT {sent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
