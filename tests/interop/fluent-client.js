#!/usr/bin/env node
// Reference Forward-protocol v1 *client* for interop tests: a real FluentClient
// from @fluent-org/logger (pinned in package.json).
//
// Usage:
//   node fluent-client.js --port N [options] FILE
//
// Reads FILE as JSON lines (blank lines skipped) and emits each parsed object
// as one record with tag `audit` to 127.0.0.1:N.
//
// Options:
//   --port N                  server port (or $FLUENT_PORT)
//   --host H                  default 127.0.0.1
//   --tag T                   default audit
//   --mode M                  message | forward | packed | compressed
//                             (library eventMode Message | Forward |
//                             PackedForward | CompressedPackedForward);
//                             default packed (the library's default)
//   --ack                     request an ack (chunk option) for every message
//                             and wait for it
//   --ack-timeout MS          per-message ack timeout; default: --timeout
//   --batch N                 emit N records, wait for them, emit the next N:
//                             N records per message (per connection, one
//                             after the other) in forward/packed/compressed
//                             modes. Default 0 = everything in one go, which
//                             the library packs into ONE message per tag.
//   --shared-key K            answer the server's HELO (handshake)
//   --client-hostname NAME    hostname sent in PING; default fluent-client-js
//                             (must differ from the server's hostname)
//   --username U --password P user auth (needs --shared-key)
//   --tls-ca F                connect with TLS, trusting this CA
//   --servername NAME         TLS SNI + certificate name to verify (default:
//                             the host, checked against IP SANs)
//   --tls-cert F --tls-key F  client certificate (mTLS)
//   --insecure                TLS without certificate verification
//   --time-field F            event time from record field F (RFC 3339 with
//                             up to 9 fractional digits), sent as EventTime
//                             with full nanosecond precision; records without
//                             it fall back to "now"
//   --int-time                send integer seconds instead of EventTime
//                             (of --time-field if given, else of now)
//   --reconnect               let the library reconnect (default: fail fast)
//   --timeout SEC             give up after SEC seconds (default 30), exit 3
//
// stdout: `SENT <n>` once every record is written (and acked with --ack);
// exit 0. On error: message on stderr, exit 1 (bad usage 2, timeout 3).
"use strict";

const fs = require("fs");
const {FluentClient, EventTime} = require("@fluent-org/logger");

const MODES = {
  message: "Message",
  forward: "Forward",
  packed: "PackedForward",
  packedforward: "PackedForward",
  compressed: "CompressedPackedForward",
  compressedpackedforward: "CompressedPackedForward",
};

function usage(msg) {
  if (msg) process.stderr.write(`fluent-client.js: ${msg}\n`);
  process.stderr.write(
    "usage: node fluent-client.js --port N [--host H] [--tag T] [--mode message|forward|packed|compressed]\n" +
      "       [--ack [--ack-timeout MS]] [--batch N] [--shared-key K [--client-hostname H] [--username U --password P]]\n" +
      "       [--tls-ca F [--servername NAME] [--tls-cert F --tls-key F] | --insecure]\n" +
      "       [--time-field F] [--int-time] [--reconnect] [--timeout SEC] FILE\n"
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    port: process.env.FLUENT_PORT,
    host: "127.0.0.1",
    tag: "audit",
    mode: "PackedForward",
    ack: false,
    ackTimeout: null,
    batch: 0,
    sharedKey: null,
    clientHostname: "fluent-client-js",
    username: null,
    password: null,
    tlsCa: null,
    servername: null,
    tlsCert: null,
    tlsKey: null,
    insecure: false,
    timeField: null,
    intTime: false,
    reconnect: false,
    timeout: 30,
    file: null,
  };
  const need = (i, flag) => {
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case "--port": o.port = need(i, a); i++; break;
      case "--host": o.host = need(i, a); i++; break;
      case "--tag": o.tag = need(i, a); i++; break;
      case "--mode": {
        const m = MODES[need(i, a).toLowerCase()];
        if (!m) usage(`unknown mode ${argv[i + 1]}`);
        o.mode = m;
        i++;
        break;
      }
      case "--ack": o.ack = true; break;
      case "--ack-timeout": o.ackTimeout = Number(need(i, a)); i++; break;
      case "--batch": o.batch = Number(need(i, a)); i++; break;
      case "--shared-key": o.sharedKey = need(i, a); i++; break;
      case "--client-hostname": o.clientHostname = need(i, a); i++; break;
      case "--username": o.username = need(i, a); i++; break;
      case "--password": o.password = need(i, a); i++; break;
      case "--tls-ca": o.tlsCa = need(i, a); i++; break;
      case "--servername": o.servername = need(i, a); i++; break;
      case "--tls-cert": o.tlsCert = need(i, a); i++; break;
      case "--tls-key": o.tlsKey = need(i, a); i++; break;
      case "--insecure": o.insecure = true; break;
      case "--time-field": o.timeField = need(i, a); i++; break;
      case "--int-time": o.intTime = true; break;
      case "--reconnect": o.reconnect = true; break;
      case "--timeout": o.timeout = Number(need(i, a)); i++; break;
      case "-h": case "--help": usage();
      default:
        if (a.startsWith("-")) usage(`unknown option ${a}`);
        if (o.file !== null) usage(`unexpected argument ${a}`);
        o.file = a;
    }
  }
  if (o.file === null) usage("missing FILE");
  if (o.port === undefined || !/^\d+$/.test(String(o.port)) || Number(o.port) < 1 || Number(o.port) > 65535) {
    usage(`missing or bad --port ${o.port === undefined ? "" : o.port}`);
  }
  o.port = Number(o.port);
  if (!(o.timeout > 0)) usage("--timeout must be > 0");
  if (!Number.isInteger(o.batch) || o.batch < 0) usage("--batch must be an integer >= 0");
  if (o.ackTimeout === null) o.ackTimeout = o.timeout * 1000;
  if (!(o.ackTimeout > 0)) usage("--ack-timeout must be > 0");
  if ((o.username === null) !== (o.password === null)) usage("--username and --password go together");
  if (o.username !== null && o.sharedKey === null) usage("--username/--password need --shared-key");
  if (!!o.tlsCert !== !!o.tlsKey) usage("--tls-cert and --tls-key go together");
  if ((o.servername || o.tlsCert) && !(o.tlsCa || o.insecure)) usage("--servername/--tls-cert need --tls-ca or --insecure");
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const fail = (msg, code = 1) => {
  process.stderr.write(`fluent-client.js: ${msg}\n`);
  process.exit(code);
};

// --- records ---------------------------------------------------------------
let records;
try {
  records = fs
    .readFileSync(opts.file, "utf8")
    .split("\n")
    .map((l, i) => [l, i + 1])
    .filter(([l]) => l.trim() !== "")
    .map(([l, n]) => {
      let v;
      try {
        v = JSON.parse(l);
      } catch (e) {
        throw new Error(`${opts.file}:${n}: ${e.message}`);
      }
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        throw new Error(`${opts.file}:${n}: not a JSON object`);
      }
      return v;
    });
} catch (e) {
  fail(e.message);
}

// --- timestamps --------------------------------------------------------------
// FluentClient takes a *number* as milliseconds and, unless the client option
// `milliseconds: true` is set, floors it to integer seconds. An EventTime
// instance is sent as-is (ext type 0, 4-byte seconds + 4-byte nanoseconds),
// so EventTime is how nanosecond precision is kept.
const wallAnchorNs = BigInt(Date.now()) * 1000000n - process.hrtime.bigint();
function nowNs() {
  return wallAnchorNs + process.hrtime.bigint();
}
function eventTimeFromNs(ns) {
  return new EventTime(Number(ns / 1000000000n), Number(ns % 1000000000n));
}
const RFC3339 = /^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$/;
function parseRfc3339Ns(s) {
  const m = typeof s === "string" && RFC3339.exec(s);
  if (!m) return null;
  const ms = Date.parse(`${m[1]}T${m[2]}${m[4].toUpperCase() === "Z" ? "Z" : m[4]}`);
  if (Number.isNaN(ms)) return null;
  const frac = (m[3] || "").padEnd(9, "0");
  return BigInt(ms) * 1000000n + BigInt(frac);
}
function timeFor(record) {
  let ns = null;
  if (opts.timeField !== null) ns = parseRfc3339Ns(record[opts.timeField]);
  if (ns === null) ns = nowNs();
  if (opts.intTime) return Number(ns / 1000000n); // ms -> library floors to s
  return eventTimeFromNs(ns);
}

// --- client ------------------------------------------------------------------
const socket = {
  host: opts.host,
  port: opts.port,
  // No idle timeout: the library's default (3 s) closes an idle socket,
  // which would drop an ack that a slow server sends late.
  timeout: -1,
  disableReconnect: !opts.reconnect,
};
if (opts.tlsCa || opts.insecure) {
  socket.tls = {};
  if (opts.tlsCa) socket.tls.ca = fs.readFileSync(opts.tlsCa);
  if (opts.insecure) socket.tls.rejectUnauthorized = false;
  if (opts.servername) socket.tls.servername = opts.servername;
  if (opts.tlsCert) {
    socket.tls.cert = fs.readFileSync(opts.tlsCert);
    socket.tls.key = fs.readFileSync(opts.tlsKey);
  }
}
const clientOptions = {
  eventMode: opts.mode,
  socket,
  // With reconnect disabled the library does not auto-connect: we call
  // connect() ourselves so that a refused connection fails at once. With
  // --reconnect the library connects (and retries) on its own.
  disableAutoconnect: !opts.reconnect,
};
if (opts.ack) clientOptions.ack = {ackTimeout: opts.ackTimeout};
if (opts.sharedKey !== null) {
  clientOptions.security = {clientHostname: opts.clientHostname, sharedKey: opts.sharedKey};
  if (opts.username !== null) {
    clientOptions.security.username = opts.username;
    clientOptions.security.password = opts.password;
  }
}

const overall = setTimeout(
  () => fail(`timed out after ${opts.timeout}s (sent so far: ${sent}/${records.length})`, 3),
  opts.timeout * 1000
);

let sent = 0;
let done = false;
const FATAL = new Set([
  "AuthError",
  "SharedKeyMismatchError",
  "ConfigError",
  "UnexpectedMessageError",
  "FatalSocketError",
]);

async function main() {
  let client;
  try {
    client = new FluentClient(null, clientOptions);
  } catch (e) {
    fail(`bad client options: ${e.message}`, 2);
  }
  // Socket errors (auth failure, TLS failure, connection reset, ...) do not
  // reject pending emit() promises: the queued events just wait for a
  // writable socket that never comes. Fail here instead of hanging.
  client.socketOn("error", err => {
    if (done) return;
    const name = (err && err.name) || "Error";
    if (!opts.reconnect || FATAL.has(name)) {
      fail(`socket error: ${name}: ${err && err.message}`);
    }
    process.stderr.write(`fluent-client.js: socket error (will reconnect): ${name}: ${err && err.message}\n`);
  });
  client.socketOn("close", () => {
    if (!done && !opts.reconnect) fail(`connection closed by server after ${sent}/${records.length} records`);
  });

  if (!opts.reconnect) {
    try {
      await client.connect();
    } catch (e) {
      fail(`cannot connect to ${opts.host}:${opts.port}: ${e.message}`);
    }
  }

  const batch = opts.batch > 0 ? opts.batch : records.length;
  for (let i = 0; i < records.length; i += batch) {
    const slice = records.slice(i, i + batch);
    const promises = slice.map(r => client.emit(opts.tag, r, timeFor(r)));
    try {
      await Promise.all(promises);
    } catch (e) {
      fail(`emit failed: ${(e && e.name) || "Error"}: ${e && e.message}`);
    }
    sent += slice.length;
  }

  done = true;
  clearTimeout(overall);
  process.stdout.write(`SENT ${sent}\n`);
  // Close politely, but never hang on it.
  const t = setTimeout(() => process.exit(0), 2000);
  try {
    await client.disconnect();
  } catch (e) {
    // already reported SENT; nothing is pending
  }
  clearTimeout(t);
  process.exit(0);
}

main().catch(e => fail(`unexpected error: ${e && e.stack}`));
