#!/usr/bin/env python3
"""User-space stand-in for `tc qdisc ... netem delay D loss L`, for kernels
built without sch_netem (this CI machine kind: "Specified qdisc kind is
unknown"). Packets are sent here by an iptables rule

    iptables -A OUTPUT -o veth0 -j NFQUEUE --queue-num N

(nfnetlink_queue, metadata only: no packet bytes are copied); each one is
dropped with probability L, the others are accepted after D seconds, in
order. Runs in the network namespace of the rule (`ip netns exec NS ...`).
Pure Python, no libnetfilter_queue: the netlink messages are built by hand.

Prints "bound QUEUE" when ready, and "seen N dropped M" at SIGTERM/SIGINT or
after --max-seconds. Without this process the queued packets are dropped
(the rule has no --queue-bypass), like a cable pulled out.
"""

import argparse
import heapq
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_DROP, NF_ACCEPT = 0, 1
SO_RCVBUFFORCE = 33

STOP = False


def _stop(signum, frame):  # noqa: ARG001
    global STOP
    STOP = True


def attr(t, data):
    n = 4 + len(data)
    return struct.pack("=HH", n, t) + data + b"\0" * ((4 - n % 4) % 4)


def msg(mtype, flags, seq, payload):
    return struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, 0) + payload


def nfgen(family, queue):
    return struct.pack("=BBH", family, 0, socket.htons(queue))


def config(sock, queue, seq, attrs):
    sock.send(msg((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq,
                  nfgen(socket.AF_UNSPEC, queue) + attrs))
    data = sock.recv(65536)
    _, mtype, _, _, _ = struct.unpack_from("=IHHII", data)
    if mtype == NLMSG_ERROR:
        err = struct.unpack_from("=i", data, 16)[0]
        if err:
            raise OSError(-err, f"nfnetlink_queue config failed: {err}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.1, help="seconds")
    p.add_argument("--loss", type=float, default=0.1, help="probability 0..1")
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--seed", type=int)
    a = p.parse_args()
    rng = random.Random(a.seed)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind((0, 0))
    config(sock, a.queue, 1, attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)))
    config(sock, a.queue, 2, attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
           + attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536)))
    print(f"bound {a.queue}", flush=True)

    vtype = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
    pending = []  # (due, seq, packet id)
    seen = dropped = overruns = 0
    order = 0
    end = time.monotonic() + a.max_seconds

    def verdict(pid, v):
        sock.send(msg(vtype, NLM_F_REQUEST, 0, nfgen(socket.AF_UNSPEC, a.queue)
                      + attr(NFQA_VERDICT_HDR, struct.pack("!II", v, pid))))

    while not STOP and time.monotonic() < end:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, pid = heapq.heappop(pending)
            verdict(pid, NF_ACCEPT)
        timeout = max(0.0, pending[0][0] - now) if pending else 0.5
        try:
            r, _, _ = select.select([sock], [], [], min(timeout, 0.5))
        except InterruptedError:
            continue
        if not r:
            continue
        try:
            data = sock.recv(1 << 20)
        except OSError as e:  # ENOBUFS: the kernel dropped messages (their packets too)
            overruns += 1
            if e.errno not in (105,):
                raise
            continue
        off = 0
        now = time.monotonic()
        while off + 16 <= len(data):
            ln, mtype, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if ln < 16:
                break
            if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a_off = off + 16 + 4  # nlmsghdr + nfgenmsg
                pid = None
                while a_off + 4 <= off + ln:
                    alen, atype = struct.unpack_from("=HH", data, a_off)
                    if alen < 4:
                        break
                    if (atype & 0x7FFF) == NFQA_PACKET_HDR:
                        pid = struct.unpack_from("!I", data, a_off + 4)[0]
                    a_off += (alen + 3) & ~3
                if pid is not None:
                    seen += 1
                    if rng.random() < a.loss:
                        dropped += 1
                        verdict(pid, NF_DROP)
                    else:
                        order += 1
                        heapq.heappush(pending, (now + a.delay, order, pid))
            off += (ln + 3) & ~3
    for _, _, pid in pending:
        verdict(pid, NF_ACCEPT)
    print(f"seen {seen} dropped {dropped} overruns {overruns}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
