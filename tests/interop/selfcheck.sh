#!/usr/bin/env bash
# Self-check of the interop harness: the reference peers in this directory
# against each other, on loopback only.
#   fluent-server.js  <-  fluent-client.js (4 modes, ack, batches, handshake,
#                          TLS, mTLS, timestamps) and fluent_sender.py
# plus failure cases (wrong key / password / CA, missing client cert, closed
# port) that must fail fast with a non-zero exit instead of hanging.
#
# Usage: bash tests/interop/selfcheck.sh      (from anywhere)
# Installs node_modules (npm ci) and fluent-logger (pip) when missing, unless
# INTEROP_NO_INSTALL=1. Ends with "N passed, N failed"; exit 0 iff none failed.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/interop-selfcheck.XXXXXX")"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FIXTURE="$HERE/sample-events.jsonl"
NODE=(timeout 60 node)
PY=(timeout 60 python3)
PASS=0
FAIL=0

pass() { PASS=$((PASS + 1)); echo "ok   - $1"; }
failc() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; shift; local f; for f in "$@"; do [ -s "$f" ] && sed 's/^/       | /' "$f" | head -40; done; }

# --- dependencies --------------------------------------------------------------
if [ ! -d node_modules/@fluent-org/logger ]; then
  if [ "${INTEROP_NO_INSTALL:-0}" = 1 ]; then echo "node_modules missing (run npm ci in $HERE)"; exit 2; fi
  timeout 300 npm ci --no-audit --no-fund >"$TMP/npm.log" 2>&1 || { cat "$TMP/npm.log"; echo "npm ci failed"; exit 2; }
fi
if ! python3 -c 'import fluent.sender' 2>/dev/null; then
  if [ "${INTEROP_NO_INSTALL:-0}" = 1 ]; then echo "python fluent-logger missing (pip install -r $HERE/requirements.txt)"; exit 2; fi
  timeout 300 python3 -m pip install -q -r requirements.txt >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log"; echo "pip install failed"; exit 2; }
fi

# --- certificates ----------------------------------------------------------------
mkcerts() {
  local d="$TMP/pki"
  mkdir -p "$d"
  (
    cd "$d" || exit 1
    set -e
    for ca in ca otherca; do
      openssl req -x509 -newkey rsa:2048 -nodes -keyout $ca.key -out $ca.crt -days 2 \
        -subj "/CN=interop test $ca" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    done
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext
    openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=interop-client"
    printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext
  ) >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log"; echo "openssl failed"; exit 2; }
  PKI="$d"
}
mkcerts

# --- server control --------------------------------------------------------------
# start_server NAME [fluent-server.js args...]  -> sets SRV_PID, PORT, SRV_OUT
start_server() {
  local name="$1"; shift
  SRV_OUT="$TMP/$name.server.out"
  node fluent-server.js --port 0 "$@" >"$SRV_OUT" 2>"$TMP/$name.server.err" &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  PORT=""
  local line
  for _ in $(seq 1 100); do
    line="$(head -n1 "$SRV_OUT" 2>/dev/null)"
    if [[ "$line" =~ ^LISTENING\ ([0-9]+)$ ]]; then PORT="${BASH_REMATCH[1]}"; return 0; fi
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "server $name did not start:"; cat "$TMP/$name.server.err"
  kill -KILL "$SRV_PID" 2>/dev/null; wait "$SRV_PID" 2>/dev/null; forget_pid "$SRV_PID"
  return 1
}
forget_pid() { # stopped and reaped: never signal that pid number again
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop_server() {
  kill -TERM "$SRV_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SRV_PID" 2>/dev/null; then
    echo "server did not exit on SIGTERM"; kill -KILL "$SRV_PID" 2>/dev/null
    wait "$SRV_PID" 2>/dev/null; forget_pid "$SRV_PID"; return 1
  fi
  wait "$SRV_PID" 2>/dev/null
  local rc=$?
  forget_pid "$SRV_PID"
  [ "$rc" = 0 ] || { echo "server exited with $rc after SIGTERM"; return 1; }
}

# [FIX=fixture.jsonl] expect_ok NAME "server args" VERIFY_ARGS -- client command...
# Runs one server + one client; client must print SENT 20 and exit 0; the
# server must have printed exactly the fixture (checked by verify_records.py).
expect_ok() {
  local name="$1" sargs="$2" vargs="$3"; shift 4
  # shellcheck disable=SC2086
  if ! start_server "$name" $sargs >"$TMP/$name.start" 2>&1; then failc "$name (server start)" "$TMP/$name.start"; return; fi
  local cout="$TMP/$name.client.out" cerr="$TMP/$name.client.err"
  local fixture="${FIX:-$FIXTURE}"
  "$@" --port "$PORT" "$fixture" >"$cout" 2>"$cerr"
  local rc=$?
  sleep 0.2 # the python sender has no acks: give the server a moment
  stop_server >"$TMP/$name.stop" 2>&1 || { failc "$name (server stop)" "$TMP/$name.stop" "$TMP/$name.server.err"; return; }
  if [ "$rc" != 0 ] || [ "$(cat "$cout")" != "SENT 20" ]; then
    failc "$name (client rc=$rc, stdout: $(tr '\n' ' ' <"$cout"))" "$cerr" "$TMP/$name.server.err"; return
  fi
  # shellcheck disable=SC2086
  if python3 verify_records.py "$fixture" "$SRV_OUT" $vargs >"$TMP/$name.verify" 2>&1; then
    pass "$name ($(cat "$TMP/$name.verify"))"
  else
    failc "$name (records)" "$TMP/$name.verify" "$TMP/$name.server.err"
  fi
}

# expect_fail NAME "server args" MAX_SECONDS -- client command...
# The client must exit non-zero (not by the harness timeout), within
# MAX_SECONDS, with a message on stderr; the server must have printed no record.
expect_fail() {
  local name="$1" sargs="$2" max="$3"; shift 4
  # shellcheck disable=SC2086
  if ! start_server "$name" $sargs >"$TMP/$name.start" 2>&1; then failc "$name (server start)" "$TMP/$name.start"; return; fi
  local cout="$TMP/$name.client.out" cerr="$TMP/$name.client.err" t0=$SECONDS
  "$@" --port "$PORT" "$FIXTURE" >"$cout" 2>"$cerr"
  local rc=$? took=$((SECONDS - t0))
  stop_server >"$TMP/$name.stop" 2>&1 || { failc "$name (server stop)" "$TMP/$name.stop"; return; }
  local nrec; nrec=$(($(wc -l <"$SRV_OUT") - 1))
  if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$took" -gt "$max" ] || [ ! -s "$cerr" ] || [ "$nrec" != 0 ]; then
    failc "$name (want fast failure: rc=$rc took=${took}s records=$nrec)" "$cout" "$cerr"
  else
    pass "$name (rc=$rc in ${took}s: $(head -n1 "$cerr"))"
  fi
}

CLIENT=("${NODE[@]}" fluent-client.js --timeout 20)
SENDER=("${PY[@]}" fluent_sender.py --timeout 10)
TLS_SRV="--tls-cert $TMP/pki/server.crt --tls-key $TMP/pki/server.key"
MTLS_SRV="$TLS_SRV --tls-ca $TMP/pki/ca.crt --require-client-cert"
SEC_SRV="--shared-key s3cr3t-k€y"
USER_SRV="$SEC_SRV --username alice --password pa55w0rd --username bob --password hunter2"

echo "# plain TCP, every event mode"
for mode in message forward packed compressed; do
  expect_ok "plain-$mode-ack" "" "" -- "${CLIENT[@]}" --mode "$mode" --ack
done
expect_ok "plain-packed-noack" "" "" -- "${CLIENT[@]}" --mode packed
expect_ok "plain-message-noack" "" "" -- "${CLIENT[@]}" --mode message
expect_ok "plain-forward-batch3-ack" "" "" -- "${CLIENT[@]}" --mode forward --batch 3 --ack
expect_ok "plain-compressed-batch7-ack" "" "" -- "${CLIENT[@]}" --mode compressed --batch 7 --ack
expect_ok "python-sender" "" "" -- "${SENDER[@]}"

echo "# timestamps"
expect_ok "time-eventtime-packed" "--meta" "--meta --time-field stageTimestamp" -- "${CLIENT[@]}" --mode packed --ack --time-field stageTimestamp
expect_ok "time-eventtime-message" "--meta" "--meta --time-field requestReceivedTimestamp" -- "${CLIENT[@]}" --mode message --ack --time-field requestReceivedTimestamp
expect_ok "time-int-forward" "--meta" "--meta --int-time-field stageTimestamp" -- "${CLIENT[@]}" --mode forward --ack --int-time --time-field stageTimestamp
expect_ok "time-python-eventtime" "--meta" "--meta --time-field stageTimestamp" -- "${SENDER[@]}" --time-field stageTimestamp
# audit timestamps carry microseconds; a copy with 9 fractional digits proves
# that nanoseconds survive (EventTime), not just microseconds
python3 - "$FIXTURE" "$TMP/ns-events.jsonl" <<'PYEOF'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f, open(sys.argv[2], "w", encoding="utf-8") as out:
    for i, line in enumerate(l for l in f if l.strip()):
        r = json.loads(line)
        r["stageTimestamp"] = r["stageTimestamp"][:-1] + "%03dZ" % ((i * 37 + 1) % 1000)
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
PYEOF
FIX="$TMP/ns-events.jsonl" expect_ok "time-ns-node-compressed" "--meta" "--meta --time-field stageTimestamp" -- "${CLIENT[@]}" --mode compressed --ack --time-field stageTimestamp
FIX="$TMP/ns-events.jsonl" expect_ok "time-ns-python" "--meta" "--meta --time-field stageTimestamp" -- "${SENDER[@]}" --time-field stageTimestamp

echo "# handshake: shared key, shared key + user/password"
for mode in message forward packed compressed; do
  expect_ok "sharedkey-$mode-ack" "$SEC_SRV" "" -- "${CLIENT[@]}" --mode "$mode" --ack --shared-key "s3cr3t-k€y"
done
expect_ok "userauth-packed-ack" "$USER_SRV" "" -- "${CLIENT[@]}" --mode packed --ack --shared-key "s3cr3t-k€y" --username bob --password hunter2
expect_ok "userauth-message-ack" "$USER_SRV" "" -- "${CLIENT[@]}" --mode message --ack --shared-key "s3cr3t-k€y" --username alice --password pa55w0rd

echo "# TLS / mTLS"
expect_ok "tls-ip-san-packed-ack" "$TLS_SRV" "" -- "${CLIENT[@]}" --mode packed --ack --tls-ca "$TMP/pki/ca.crt"
expect_ok "tls-dns-san-compressed-ack" "$TLS_SRV" "" -- "${CLIENT[@]}" --mode compressed --ack --tls-ca "$TMP/pki/ca.crt" --servername localhost
expect_ok "tls-userauth-forward-ack" "$TLS_SRV $USER_SRV" "" -- "${CLIENT[@]}" --mode forward --ack --tls-ca "$TMP/pki/ca.crt" --servername localhost --shared-key "s3cr3t-k€y" --username alice --password pa55w0rd
expect_ok "mtls-message-ack" "$MTLS_SRV" "" -- "${CLIENT[@]}" --mode message --ack --tls-ca "$TMP/pki/ca.crt" --tls-cert "$TMP/pki/client.crt" --tls-key "$TMP/pki/client.key"

echo "# failures must be fast and non-zero"
expect_fail "fail-wrong-shared-key" "$SEC_SRV" 10 -- "${CLIENT[@]}" --ack --shared-key wrong
expect_fail "fail-wrong-password" "$USER_SRV" 10 -- "${CLIENT[@]}" --ack --shared-key "s3cr3t-k€y" --username alice --password nope
expect_fail "fail-unknown-user" "$USER_SRV" 10 -- "${CLIENT[@]}" --ack --shared-key "s3cr3t-k€y" --username mallory --password x
expect_fail "fail-no-handshake-config" "$SEC_SRV" 10 -- "${CLIENT[@]}" --ack
expect_fail "fail-tls-wrong-ca" "$TLS_SRV" 10 -- "${CLIENT[@]}" --ack --tls-ca "$TMP/pki/otherca.crt"
expect_fail "fail-tls-wrong-name" "$TLS_SRV" 10 -- "${CLIENT[@]}" --ack --tls-ca "$TMP/pki/ca.crt" --servername not-the-server.example
expect_fail "fail-mtls-no-client-cert" "$MTLS_SRV" 10 -- "${CLIENT[@]}" --ack --tls-ca "$TMP/pki/ca.crt"
expect_fail "fail-plain-client-to-tls-server" "$TLS_SRV" 10 -- "${CLIENT[@]}" --ack --ack-timeout 2000

# closed port: reserve an ephemeral port, then free it
start_server closedport >/dev/null 2>&1 && { CLOSED="$PORT"; stop_server >/dev/null 2>&1; }
t0=$SECONDS
"${CLIENT[@]}" --port "$CLOSED" "$FIXTURE" >"$TMP/cp.out" 2>"$TMP/cp.err"; rc=$?
if [ "$rc" = 1 ] && [ $((SECONDS - t0)) -le 5 ]; then pass "fail-node-closed-port (rc=1: $(head -n1 "$TMP/cp.err"))"; else failc "fail-node-closed-port (rc=$rc)" "$TMP/cp.err"; fi
t0=$SECONDS
"${SENDER[@]}" --port "$CLOSED" "$FIXTURE" >"$TMP/pcp.out" 2>"$TMP/pcp.err"; rc=$?
if [ "$rc" = 1 ] && [ $((SECONDS - t0)) -le 5 ]; then pass "fail-python-closed-port (rc=1: $(head -n1 "$TMP/pcp.err"))"; else failc "fail-python-closed-port (rc=$rc)" "$TMP/pcp.err"; fi

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
