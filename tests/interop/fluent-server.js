#!/usr/bin/env node
// Reference Forward-protocol v1 *server* for interop tests: a real FluentServer
// from @fluent-org/logger (pinned in package.json).
//
// Usage:
//   node fluent-server.js [PORT] [--port N] [--host H] [--meta] [--verbose]
//        [--shared-key K [--server-hostname NAME]
//         [--username U --password P]...]
//        [--tls-cert F --tls-key F [--tls-ca F] [--require-client-cert]]
//
// PORT defaults to $FLUENT_PORT, then 0 (ephemeral).
// stdout protocol:
//   line 1:    LISTENING <port>
//   then:      one JSON line per received record (JSON.stringify(record)),
//              in receive order. With --meta each line is instead
//              {"tag":..,"time":<int> | {"epoch":s,"nano":ns},"record":{..}}.
// Everything else goes to stderr. SIGTERM / SIGINT: close and exit 0.
"use strict";

const fs = require("fs");
const {FluentServer, EventTime} = require("@fluent-org/logger");

function usage(msg) {
  if (msg) process.stderr.write(`fluent-server.js: ${msg}\n`);
  process.stderr.write(
    "usage: node fluent-server.js [PORT] [--port N] [--host H] [--meta] [--verbose]\n" +
      "       [--shared-key K [--server-hostname NAME] [--username U --password P]...]\n" +
      "       [--tls-cert F --tls-key F [--tls-ca F] [--require-client-cert]]\n"
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    port: process.env.FLUENT_PORT !== undefined ? process.env.FLUENT_PORT : "0",
    host: "127.0.0.1",
    meta: false,
    verbose: false,
    sharedKey: null,
    serverHostname: "fluent-server-js",
    usernames: [],
    passwords: [],
    tlsCert: null,
    tlsKey: null,
    tlsCa: null,
    requireClientCert: false,
  };
  const need = (i, flag) => {
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    return argv[i + 1];
  };
  let positional = 0;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case "--port": o.port = need(i, a); i++; break;
      case "--host": o.host = need(i, a); i++; break;
      case "--meta": o.meta = true; break;
      case "--verbose": o.verbose = true; break;
      case "--shared-key": o.sharedKey = need(i, a); i++; break;
      case "--server-hostname": o.serverHostname = need(i, a); i++; break;
      case "--username": o.usernames.push(need(i, a)); i++; break;
      case "--password": o.passwords.push(need(i, a)); i++; break;
      case "--tls-cert": o.tlsCert = need(i, a); i++; break;
      case "--tls-key": o.tlsKey = need(i, a); i++; break;
      case "--tls-ca": o.tlsCa = need(i, a); i++; break;
      case "--require-client-cert": o.requireClientCert = true; break;
      case "-h": case "--help": usage();
      default:
        if (a.startsWith("-")) usage(`unknown option ${a}`);
        if (positional++ > 0) usage(`unexpected argument ${a}`);
        o.port = a;
    }
  }
  if (!/^\d+$/.test(String(o.port)) || Number(o.port) > 65535) usage(`bad port ${o.port}`);
  o.port = Number(o.port);
  if (o.usernames.length !== o.passwords.length) usage("--username and --password must come in pairs");
  if (o.usernames.length > 0 && o.sharedKey === null) {
    // FluentServer hashes the shared key in every PING check; user auth
    // without a shared key is not a configuration it (or fluentd) supports.
    usage("--username/--password need --shared-key");
  }
  if (!!o.tlsCert !== !!o.tlsKey) usage("--tls-cert and --tls-key go together");
  if ((o.tlsCa || o.requireClientCert) && !o.tlsCert) usage("--tls-ca/--require-client-cert need --tls-cert/--tls-key");
  if (o.requireClientCert && !o.tlsCa) usage("--require-client-cert needs --tls-ca");
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const log = msg => process.stderr.write(`fluent-server.js: ${msg}\n`);

const serverOptions = {listenOptions: {host: opts.host, port: opts.port}};
if (opts.sharedKey !== null) {
  const userDict = {};
  opts.usernames.forEach((u, i) => (userDict[u] = opts.passwords[i]));
  serverOptions.security = {
    serverHostname: opts.serverHostname,
    sharedKey: opts.sharedKey,
    authorize: opts.usernames.length > 0,
    userDict,
  };
}
if (opts.tlsCert) {
  serverOptions.tlsOptions = {
    cert: fs.readFileSync(opts.tlsCert),
    key: fs.readFileSync(opts.tlsKey),
  };
  if (opts.tlsCa) serverOptions.tlsOptions.ca = fs.readFileSync(opts.tlsCa);
  if (opts.requireClientCert) {
    serverOptions.tlsOptions.requestCert = true;
    serverOptions.tlsOptions.rejectUnauthorized = true;
  }
}

const server = new FluentServer(serverOptions);

// stdout is a pipe or a file in tests; on Linux both are written
// synchronously by Node, so each line is out before the next event is
// processed. (FluentServer writes the ack *before* emitting "entry", but both
// happen in the same tick, so the line is written before the client can act
// on the ack.)
let count = 0;
server.on("entry", (tag, time, record) => {
  count++;
  let line;
  if (opts.meta) {
    const t = time instanceof EventTime ? {epoch: time.epoch, nano: time.nano} : time;
    line = JSON.stringify({tag, time: t, record});
  } else {
    line = JSON.stringify(record);
  }
  process.stdout.write(line + "\n");
});

if (opts.verbose) {
  // handleConnection is private in the TypeScript types but looked up on the
  // instance at call time, so it can be wrapped for logging.
  const orig = server.handleConnection.bind(server);
  server.handleConnection = socket => {
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    log(`connection from ${peer}`);
    socket.on("close", () => log(`connection from ${peer} closed (records so far: ${count})`));
    return orig(socket);
  };
  server.server.on("tlsClientError", err => log(`TLS client error: ${err.message}`));
}

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  if (opts.verbose) log(`${signal}: closing after ${count} records`);
  // FluentServer.close() waits for every client socket to finish closing,
  // which a misbehaving client can delay forever: bound it.
  const t = setTimeout(() => process.exit(0), 2000);
  server.close().then(() => {
    clearTimeout(t);
    process.exit(0);
  });
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

server.server.on("error", err => {
  log(`listen error: ${err.message}`);
  process.exit(1);
});

server.listen().then(() => {
  process.stdout.write(`LISTENING ${server.port}\n`);
  if (opts.verbose) {
    log(`listening on ${opts.host}:${server.port}` +
      (opts.tlsCert ? " (TLS" + (opts.requireClientCert ? ", client cert required)" : ")") : "") +
      (opts.sharedKey !== null ? ` (shared key${opts.usernames.length ? " + user auth" : ""})` : ""));
  }
});
