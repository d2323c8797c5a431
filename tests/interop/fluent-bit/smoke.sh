#!/usr/bin/env bash
# Smoke test of the fluent-bit build on loopback (see README.md).
#  1. fluent-bit in_forward -> out_file + out_stdout; fluent-client.js sends
#     sample-events.jsonl in all four modes with --ack.
#  2. fluent-client.js -> fluent-bit in_forward -> out_forward (TLS with a CA,
#     shared key + username/password handshake, Require_ack_response,
#     Compress gzip) -> fluent-server.js; EventTime checked to the nanosecond.
# Prints `PASS ...` / `FAIL ...` lines and ends with `N passed, N failed`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INTEROP="$(cd "$HERE/.." && pwd)"
ROOT="$(cd "$INTEROP/../.." && pwd)"
BIN="${FLUENT_BIT:-$ROOT/target/fluent-bit/bin/fluent-bit}"
EVENTS="$INTEROP/sample-events.jsonl"
N_EVENTS=$(grep -c . "$EVENTS")

[[ -x "$BIN" ]] || bash "$HERE/build.sh"
[[ -d "$INTEROP/node_modules" ]] || npm ci --prefix "$INTEROP"

mkdir -p "$ROOT/target/fluent-bit"
WORK="$(mktemp -d "$ROOT/target/fluent-bit/smoke.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $rc == 0 && -z "${KEEP_WORK:-}" ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK"; fi
  exit $rc
}
trap cleanup EXIT INT TERM

pass=0; fail=0
ok()  { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

# A random free port on 127.0.0.1 below the ephemeral range (32768-60999).
# fluent-bit 1.8 cannot listen on port 0 (0 means "default 24224").
free_port() {
  python3 - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randint(20000, 32767)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()
else:
    raise SystemExit("no free port")
EOF
}

listening() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }

# start_flb NAME CONF_TEMPLATE: substitutes @PORT@, starts fluent-bit, waits
# until it listens; retries with another port if the bind fails (race).
# Sets FLB_PORT and FLB_PID.
start_flb() {
  local name=$1 tmpl=$2 try port pid
  for try in 1 2 3 4 5; do
    port=$(free_port)
    sed "s/@PORT@/$port/g" "$tmpl" > "$WORK/$name.conf"
    "$BIN" -c "$WORK/$name.conf" > "$WORK/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      if listening "$port"; then PIDS+=("$pid"); FLB_PORT=$port; FLB_PID=$pid; return 0; fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    echo "fluent-bit $name did not listen on $port (try $try):"; tail -5 "$WORK/$name.log"
  done
  return 1
}

# wait_lines FILE N: until FILE has >= N non-empty lines (10 s)
wait_lines() {
  for _ in $(seq 100); do
    [[ -f "$1" ]] && (( $(grep -c . "$1" || true) >= $2 )) && return 0
    sleep 0.1
  done
  return 1
}

echo "fluent-bit: $("$BIN" --version | head -1)  work: $WORK"

# ---------------------------------------------------------------------------
# 1. in_forward (all four modes, acks) -> out_file + out_stdout
# ---------------------------------------------------------------------------
mkdir -p "$WORK/out1"
cat > "$WORK/recv.tmpl" <<EOF
[SERVICE]
    Flush        0.2
    Grace        1
    Log_Level    info

[INPUT]
    Name         forward
    Listen       127.0.0.1
    Port         @PORT@

[OUTPUT]
    # no File: one file per tag under Path; plain = the record as JSON
    Name         file
    Match        m.*
    Path         $WORK/out1
    Format       plain

[OUTPUT]
    Name         stdout
    Match        m.*
    Format       json_lines
EOF
start_flb recv "$WORK/recv.tmpl"
RECV_PORT=$FLB_PORT
echo "fluent-bit (in_forward -> file, stdout) on 127.0.0.1:$RECV_PORT"

for mode in message forward packed compressed; do
  v=""
  if out=$(node "$INTEROP/fluent-client.js" --port "$RECV_PORT" --tag "m.$mode" --mode "$mode" \
             --ack --timeout 15 "$EVENTS" 2>&1); then
    if wait_lines "$WORK/out1/m.$mode" "$N_EVENTS" &&
       v=$(python3 "$INTEROP/verify_records.py" "$EVENTS" "$WORK/out1/m.$mode" 2>&1); then
      ok "in_forward mode=$mode ack: client '$out', out_file $v"
    else
      bad "in_forward mode=$mode: out_file check: ${v:-timeout waiting for $N_EVENTS lines}"
    fi
  else
    bad "in_forward mode=$mode ack: client failed: $out"
  fi
done
n_stdout=$(grep -c '"auditID"' "$WORK/recv.log" || true)
if (( n_stdout == 4 * N_EVENTS )); then ok "out_stdout printed $n_stdout records"
else bad "out_stdout printed $n_stdout records, expected $((4 * N_EVENTS))"; fi

# ---------------------------------------------------------------------------
# 2. client -> fluent-bit in_forward -> out_forward -> fluent-server.js
# ---------------------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/server.key" -out "$WORK/server.crt" >/dev/null 2>&1
TF=requestReceivedTimestamp

# out_forward_case NAME EXPECT(pass|xfail) [fluent-server.js options...]
# Extra fluent-bit [OUTPUT] lines are taken from $EXTRA_OUT.
out_forward_case() {
  local name=$1 expect=$2; shift 2
  local srv_out="$WORK/$name.server.out" port="" out v="" errs
  node "$INTEROP/fluent-server.js" 0 --meta "$@" > "$srv_out" 2> "$WORK/$name.server.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q '^LISTENING ' "$srv_out" 2>/dev/null && break; sleep 0.1; done
  port=$(sed -n 's/^LISTENING \([0-9]*\).*/\1/p' "$srv_out" | head -1)
  [[ -n "$port" ]] || { bad "$name: fluent-server.js did not start: $(head -3 "$WORK/$name.server.err")"; return; }

  cat > "$WORK/$name.tmpl" <<EOF
[SERVICE]
    Flush        0.2
    Grace        1
    Log_Level    info

[INPUT]
    Name         forward
    Listen       127.0.0.1
    Port         @PORT@

[OUTPUT]
    Name                  forward
    Match                 *
    Host                  127.0.0.1
    Port                  $port
    Self_Hostname         flb-smoke
    Require_ack_response  On
    Compress              gzip
    tls                   On
    tls.verify            On
    tls.ca_file           $WORK/server.crt
    tls.vhost             localhost
    Retry_Limit           1
$EXTRA_OUT
EOF
  start_flb "$name" "$WORK/$name.tmpl" || { bad "$name: fluent-bit did not start"; return; }
  echo "  $name: fluent-server.js on :$port, fluent-bit in_forward on :$FLB_PORT"

  if ! out=$(node "$INTEROP/fluent-client.js" --port "$FLB_PORT" --ack --time-field "$TF" --timeout 15 "$EVENTS" 2>&1); then
    bad "$name: client -> fluent-bit failed: $out"; return
  fi
  if wait_lines "$srv_out" $((N_EVENTS + 1)) &&
     v=$(python3 "$INTEROP/verify_records.py" "$EVENTS" "$srv_out" --meta --time-field "$TF" 2>&1); then
    if [[ $expect == pass ]]; then ok "$name: client '$out', fluent-server.js $v (EventTime to the ns)"
    else echo "XPASS $name (expected to fail, passed: $v)"; fi
  else
    errs=$(grep -E '\[ *(error|warn)\]' "$WORK/$name.log" | sed 's/^/      /' | head -3)
    if [[ $expect == xfail ]] && grep -q 'failed authorization: shared key mismatch' "$WORK/$name.log"; then
      echo "XFAIL $name (known: fluent-server.js decodes fluent-bit's raw-byte salt as UTF-8):"
      echo "$errs"
    else
      bad "$name: fluent-server.js check: ${v:-timeout waiting for records}"; echo "$errs"
    fi
  fi
}

echo "out_forward cases (TLS verified against a CA, Require_ack_response, gzip):"
EXTRA_OUT="" out_forward_case fwd_tls pass \
  --tls-cert "$WORK/server.crt" --tls-key "$WORK/server.key"

KEY=smoke-shared-key; FUSER=flb; FPASS=smoke-pass
EXTRA_OUT="    Shared_Key            $KEY
    Username              $FUSER
    Password              $FPASS" \
out_forward_case fwd_tls_auth xfail \
  --shared-key "$KEY" --username "$FUSER" --password "$FPASS" \
  --tls-cert "$WORK/server.crt" --tls-key "$WORK/server.key"

echo "$pass passed, $fail failed"
(( fail == 0 ))
