#!/usr/bin/env python3
"""A tiny HTTP CONNECT proxy for the fault suite: answers every CONNECT with
`HTTP/1.1 502 Bad Gateway` (and closes) during the first --bad-seconds after
it started, then relays normally (`HTTP/1.1 200 Connection Established`).

It prints one line "listening PORT" when it accepts connections, and one
line per decision ("502 HOST:PORT" / "relay HOST:PORT" / "relay-failed ...")
on stdout. Runs until killed, or at most --max-seconds.
"""

import argparse
import asyncio
import sys
import time

T0 = time.monotonic()


def say(msg):
    print(msg, flush=True)


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # No half-close (like the real proxies): one side ending ends both.
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass


async def handle(reader, writer, bad_seconds):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
        writer.close()
        return
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split()
    if len(parts) != 3 or parts[0] != "CONNECT":
        writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    target = parts[1]
    if time.monotonic() - T0 < bad_seconds:
        body = b"<html><head><title>502 Bad Gateway</title></head><body>upstream unreachable</body></html>\n"
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        say(f"502 {target}")
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()
        return
    host, _, port = target.rpartition(":")
    try:
        ur, uw = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 5)
    except (OSError, ValueError, asyncio.TimeoutError) as e:
        say(f"relay-failed {target} {e}")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        writer.close()
        return
    say(f"relay {target}")
    writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(pump(reader, uw), pump(ur, writer))


async def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bad-seconds", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    a = p.parse_args()
    srv = await asyncio.start_server(lambda r, w: handle(r, w, a.bad_seconds), a.listen, a.port, reuse_address=True)
    say(f"listening {a.port}")
    async with srv:
        try:
            await asyncio.wait_for(srv.serve_forever(), a.max_seconds)
        except asyncio.TimeoutError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
