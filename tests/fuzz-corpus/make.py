#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz.rs (run once; the files are committed).

Seeds are valid inputs of each kind and known-hostile ones; the fuzz test
mutates them. Forward frames follow the Forward protocol v1 spec (Message,
Forward, PackedForward, CompressedPackedForward modes; EventTime ext 0;
HELO/PING/PONG of the handshake)."""
import gzip, json, os, struct, msgpack

here = os.path.dirname(os.path.abspath(__file__))

def put(kind, name, data):
    os.makedirs(os.path.join(here, kind), exist_ok=True)
    with open(os.path.join(here, kind, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def et(sec, nsec):
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))

rec = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
       "auditID": "0a4376d5-c6b5-4e87-9d5b-1e7c3b3b2f11", "verb": "get",
       "user": {"username": "system:admin", "groups": ["system:masters"]},
       "objectRef": {"resource": "pods", "namespace": "default", "name": "p"},
       "responseStatus": {"code": 200}, "n": 1.5, "b": True, "x": None}
p = lambda v: msgpack.packb(v, use_bin_type=True)
put("forward", "message-eventtime", p(["audit", et(1700000000, 5), rec, {"chunk": "Y2h1bmsx"}]))
put("forward", "message-int-time", p(["audit", 1700000000, rec]))
put("forward", "forward-mode", p(["audit", [[et(1, 2), rec], [3, rec]], {"chunk": "abc", "size": 2}]))
entries = p([et(1, 2), rec]) + p([1700000000, rec])
put("forward", "packed-forward", p(["audit", entries, {"chunk": "ZmItY2h1bms=", "size": 2}]))
put("forward", "packed-forward-str-entries", msgpack.packb(["audit", entries.decode("latin-1"), {}], use_bin_type=False))
put("forward", "compressed-packed-forward", p(["audit", gzip.compress(entries), {"compressed": "gzip", "size": 2, "chunk": "x"}]))
put("forward", "compressed-two-members", p(["audit", gzip.compress(entries) + gzip.compress(entries), {"compressed": "gzip"}]))
put("forward", "heartbeat", b"\xc0")
put("forward", "ack", p({"ack": "Y2h1bmsx"}))
# Hostile: declared lengths far beyond the bytes (msgpack bombs), a gzip bomb, deep nesting.
put("forward", "bomb-array32", b"\x93\xa5audit\xdd\xff\xff\xff\xff\x92\x01")
put("forward", "bomb-str32", b"\x92\xa5audit\xdb\xff\xff\xff\xf0abc")
put("forward", "bomb-bin32", b"\x93\xa5audit\xc6\xff\xff\xff\xf0\x00\x01")
put("forward", "bomb-map32", b"\x93\xa5audit\x01\xdf\xff\xff\xff\xff\xa1k")
put("forward", "gzip-bomb", p(["audit", gzip.compress(b"\x00" * (8 << 20)), {"compressed": "gzip"}]))
put("forward", "deep-nesting", b"\x93\xa5audit\x01" + b"\x91" * 5000 + b"\x01")
put("forward", "reserved-marker", b"\x93\xa5audit\x01\xc1")
# Handshake (spec §Handshake Messages).
put("handshake", "helo", p(["HELO", {"nonce": os.urandom(16), "auth": b"salt", "keepalive": True}]))
put("handshake", "helo-64-byte-nonce", p(["HELO", {"nonce": b"n" * 64, "auth": "", "keepalive": False}]))
put("handshake", "ping", p(["PING", "client.example", b"\xff" * 16, "a" * 128, "user", "b" * 128]))
put("handshake", "ping-no-auth", p(["PING", "client", "salt", "d" * 128, "", ""]))
put("handshake", "pong", p(["PONG", True, "", "server.example", "e" * 128]))
put("handshake", "pong-refused", p(["PONG", False, "shared_key mismatch", "", ""]))
# HTTP CONNECT answers (konnectivity-server, squid, tinyproxy, nginx, envoy).
for name, text in {
    "ok-konnectivity": "HTTP/1.1 200 Connection Established\r\n\r\n",
    "ok-tinyproxy": "HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n",
    "ok-old-konnectivity": "HTTP/1.1 200 OK\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\r\n",
    "in-tunnel-503": "HTTP/1.1 200 OK\r\n\r\nHTTP/0.0 503 Service Unavailable\r\n\r\n",
    "squid-503": "HTTP/1.1 503 Service Unavailable\r\nServer: squid/5.7\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\nContent-Type: text/html\r\nContent-Length: 60\r\n\r\n<html><head><title>ERROR: connect failed</title></head></html>",
    "konnectivity-500": "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available\n",
    "auth-407": "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n\r\n",
}.items():
    put("connect", name, text)
# Webhook bodies (audit.k8s.io/v1 EventList as kube-apiserver's webhook sends it).
item = {k: v for k, v in rec.items() if k not in ("kind", "apiVersion")}
put("webhook", "eventlist", json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": [item, item]}))
put("webhook", "event", json.dumps(rec, indent=1))
put("webhook", "empty-list", '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}')
put("webhook", "deep", '{"kind":"EventList","items":[' + "[" * 3000 + "]" * 3000 + "]}")
# Audit policies.
put("policy", "levels", """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    users: ["system:kube-proxy"]
    verbs: ["watch"]
    resources:
      - group: ""
        resources: ["endpoints", "services", "services/status"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps"]
        resourceNames: ["a", "b"]
  - level: Request
    namespaces: ["kube-system"]
    nonResourceURLs: ["/healthz*", "/version"]
  - level: RequestResponse
    userGroups: ["system:masters"]
    omitManagedFields: true
""")
put("policy", "v1beta1-list", "apiVersion: audit.k8s.io/v1beta1\nkind: PolicyList\nitems: []\n")
put("policy", "anchors", "a: &a [*a]\nrules: *a\n")
