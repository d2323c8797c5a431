#!/usr/bin/env bash
# Five deployment scenarios of audit-forwarder, without Kubernetes, on Linux
# network namespaces: a control plane ("cp": audit writer + forwarder), a
# cluster (receivers), and for the proxy scenarios a proxy host in between
# that does NOT forward IP packets, so the cluster is reachable only through
# the proxy. See kind/netns/README.md.
#
#   sudo kind/netns/run.sh            # all scenarios
#   sudo kind/netns/run.sh 2 5        # some of them
#
# Environment:
#   AF_BIN       the audit-forwarder binary (default target/debug/audit-forwarder,
#                relative to the repository); copied once at start
#   WASM         add-cluster-id filter (default example-filters/target/wasm32-wasip2/release/add_cluster_id.wasm)
#   EVENTS       events per scenario (default 3000; scenario 5: 4000)
#   RATE         writer events/s (default 400)
#   WAIT_SECS    bound of every wait for delivery (default 120)
#   KEEP_TMP=1   keep the temp dir (it is always kept when something failed)
#   INJECT       prove that the checks fail: extra-id (a written ID that was
#                never sent), drop-line (one received line removed), unexpected
#                (a line the receiver never got appended), wrong-cluster (the
#                filter is configured with another cluster id; scenario 1).
#                The run must then exit 1.
#
# Exit status: 0 when every selected scenario passed, 1 otherwise.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=$(command -v python3 || true)
WRITER=$REPO/scripts/audit-writer.py
CHECK=$REPO/scripts/audit-check.py
AF_BIN=${AF_BIN:-target/debug/audit-forwarder}
if [[ $AF_BIN != /* ]]; then
  if [[ -x $AF_BIN ]]; then AF_BIN=$(cd "$(dirname "$AF_BIN")" && pwd)/$(basename "$AF_BIN"); else AF_BIN=$REPO/$AF_BIN; fi
fi
WASM=${WASM:-$REPO/example-filters/target/wasm32-wasip2/release/add_cluster_id.wasm}
EVENTS=${EVENTS:-3000}
RATE=${RATE:-400}
WAIT_SECS=${WAIT_SECS:-120}
INJECT=${INJECT:-}
ALL_SCENARIOS=(1 2 3 4 5)
declare -A TITLE=([1]="direct TLS+key+WASM" [2]="konnectivity UDS" [3]="mTLS CONNECT proxy" [4]="two outputs" [5]="receiver down")

# Addresses (the namespaces are private, so every scenario uses the same plan)
CP_IP=192.168.77.1      # control plane, towards the proxy
PX_CP_IP=192.168.77.2   # proxy, control-plane side
PX_CL_IP=10.77.0.1      # proxy, cluster side (direct scenarios: the control plane)
RCV_IP=10.77.0.2        # cluster: the receivers
RCV_NAME=kubernetes-audit-tailer.kube-system.svc
SHARED_KEY="netns-shared-key-$$"

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() { warn "run.sh: $*"; exit 1; }

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------- preflight
SCENARIOS=()
for a in "$@"; do
  case $a in
    -h|--help) usage; exit 0 ;;
    [1-5]) SCENARIOS+=("$a") ;;
    *) die "unknown scenario '$a' (1..5)" ;;
  esac
done
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=("${ALL_SCENARIOS[@]}")
case $INJECT in ''|extra-id|drop-line|unexpected|wrong-cluster) ;; *) die "INJECT=$INJECT: use extra-id, drop-line, unexpected or wrong-cluster" ;; esac

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces): sudo $0 $*"
[[ -n $PY ]] || die "python3 not found"
[[ -x $AF_BIN ]] || die "AF_BIN=$AF_BIN is not an executable (build it: cargo build)"
need=(ip openssl curl)
for s in "${SCENARIOS[@]}"; do
  case $s in
    1) [[ -f $WASM ]] || die "WASM filter $WASM not found (cargo build --release --target wasm32-wasip2 --manifest-path example-filters/Cargo.toml)" ;;
    2) need+=(socat tinyproxy) ;;
    3) need+=(squid stunnel) ;;
  esac
done
for c in "${need[@]}"; do
  command -v "$c" >/dev/null 2>&1 || die "'$c' not found (Debian: apt-get install iproute2 openssl curl socat tinyproxy squid stunnel4)"
done
probe_ns="afprobe$$"
if ! err=$(ip netns add "$probe_ns" 2>&1); then
  die "cannot create a network namespace ('ip netns add' failed: $err). Needs root with CAP_SYS_ADMIN and a kernel with network namespaces; in a container, run it privileged."
fi
ip netns del "$probe_ns"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/af-netns.XXXXXX")
chmod 755 "$TMP"   # squid drops to its own user for its logs
mkdir -p "$TMP/bin"
cp "$AF_BIN" "$TMP/bin/audit-forwarder"   # a rebuild during the run does not change what runs
AF=$TMP/bin/audit-forwarder
export AF_BIN=$AF
ETC_NETNS_CREATED=0
[[ -d /etc/netns ]] || ETC_NETNS_CREATED=1

# ---------------------------------------------------------------- cleanup
# Every process started ("pid start-time name") and every namespace created
# is recorded in the scenario's directory; cleanup_dir undoes them
# (idempotent). A pid is signalled only while it still is the process that
# was started (same start time), never a later process that reused the pid.
starttime() { # the start time (clock ticks since boot) of a pid, or nothing
  local st; st=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  st=${st##*) }            # the fields after "(comm) "
  awk '{ print $20 }' <<<"$st"   # field 22 of /proc/PID/stat
}

ours() { [[ -n $2 && $(starttime "$1") == "$2" ]]; }   # ours PID STARTTIME

cleanup_dir() {
  local d=$1 pid st name ns p
  if [[ -f $d/pids ]]; then
    while read -r pid st name; do ours "$pid" "$st" && kill -TERM "$pid" 2>/dev/null; done <"$d/pids"
    for _ in $(seq 30); do
      local alive=0
      while read -r pid st name; do ours "$pid" "$st" && alive=1; done <"$d/pids"
      [[ $alive -eq 0 ]] && break
      sleep 0.1
    done
    while read -r pid st name; do ours "$pid" "$st" && kill -KILL "$pid" 2>/dev/null; done <"$d/pids"
    : >"$d/pids"
  fi
  if [[ -f $d/netns ]]; then
    while read -r ns; do
      # anything still running inside (socat's forked children, squid's kids)
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
      rm -rf "/etc/netns/$ns"
    done <"$d/netns"
    : >"$d/netns"
  fi
}

cleanup_all() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local d
  for d in "$TMP"/s*/; do [[ -d $d ]] && cleanup_dir "${d%/}"; done
  if [[ $ETC_NETNS_CREATED -eq 1 ]]; then rmdir /etc/netns 2>/dev/null; fi
  if [[ $rc -eq 0 && -z ${KEEP_TMP:-} ]]; then
    rm -rf "$TMP"
  else
    warn "logs, configs and outputs kept in $TMP"
  fi
  exit "$rc"
}
trap cleanup_all EXIT
# A signal stops the running scenario (its subshell cleans up after itself)
# and then the run; cleanup_all catches anything left.
INTERRUPTED=""
CHILD=""
on_signal() {
  INTERRUPTED=$1
  if [[ -n $CHILD ]]; then kill -TERM "$CHILD" 2>/dev/null || true; else exit "$1"; fi
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# ---------------------------------------------------------------- helpers (scenario subshells)
SD=""                 # the running scenario's directory
declare -A DAEMON=()  # pid -> name, processes that must stay up
declare -A LOGOF=()   # name -> log file
declare -A PIDOF=()   # name -> pid

fail() {
  warn "FAIL [s$SCEN]: $*"
  printf 'FAIL: %s\n' "$*" >"$SD/status"
  exit 1
}

on_err() {
  local rc=$? line=$1 cmd=$2
  [[ -f $SD/status ]] || printf 'FAIL: line %s: %s (exit %s)\n' "$line" "$cmd" "$rc" >"$SD/status"
  warn "FAIL [s$SCEN]: line $line: '$cmd' exited $rc"
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# step WHAT: a timestamped line in the scenario's steps.log (shown when a scenario is slow or fails)
step() { printf '%s +%6.1fs %s\n' "$(date +%T.%3N)" "$(awk -v a="$T_SCEN" -v b="$(now_ms)" 'BEGIN { print (b - a) / 1000 }')" "$*" >>"$SD/steps.log"; }

tail_log() { [[ -f $1 ]] && tail -n "${2:-15}" "$1" | sed 's/^/    | /' >&2 || true; }

ns_new() { # ns_new ROLE -> prints the namespace name
  local ns="af$$-s$SCEN-$1"
  ip netns add "$ns" || fail "ip netns add $ns failed"
  echo "$ns" >>"$SD/netns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0
  echo "$ns"
}

veth() { # veth NS1 IF1 ADDR1 NS2 IF2 ADDR2 (/24)
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3/24" dev "$2"
  ip -n "$4" addr add "$6/24" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
}

start() { # start NAME NS CMD... (NS "-" = no namespace); sets PIDOF[NAME]
  local name=$1 ns=$2 log="$SD/log/$1.log"; shift 2
  LOGOF[$name]=$log
  if [[ $ns == - ]]; then
    "$@" >>"$log" 2>&1 </dev/null &
  else
    ip netns exec "$ns" "$@" >>"$log" 2>&1 </dev/null &
  fi
  local pid=$!
  echo "$pid $(starttime "$pid") $name" >>"$SD/pids"
  PIDOF[$name]=$pid
  DAEMON[$pid]=$name
  step "started $name (pid $pid)"
}

not_daemon() { unset "DAEMON[${PIDOF[$1]}]"; }

check_daemons() {
  local pid
  for pid in "${!DAEMON[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local name=${DAEMON[$pid]}
      warn "  $name (pid $pid) exited unexpectedly; its log:"
      tail_log "${LOGOF[$name]}" 25
      fail "$name exited unexpectedly"
    fi
  done
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.1 s (bounded), failing
# early when a daemon died.
wait_until() {
  local secs=$1 what=$2; shift 2
  local t0; t0=$(now_ms)
  local end=$(( t0 + secs * 1000 ))
  until "$@" >/dev/null 2>&1; do
    check_daemons
    if (( $(now_ms) >= end )); then fail "timed out after ${secs}s waiting for $what"; fi
    sleep 0.1
  done
  step "waited $(( $(now_ms) - t0 )) ms for $what"
}

tcp_open() { ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; }
uds_open() { "$PY" -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$1"; }
http_ok() { ip netns exec "$1" curl -sf -m 2 -o /dev/null "http://127.0.0.1:$2$3"; }
metrics() { ip netns exec "$1" curl -sf -m 2 "http://127.0.0.1:$2/metrics"; }

# metric NS PORT NAME OUTPUT: the sum of NAME over the series of OUTPUT
metric() {
  metrics "$1" "$2" | awk -v n="$3" -v o="output=\"$4\"" '
    index($0, n "{") == 1 && index($0, o) { s += $NF; f = 1 }
    END { if (f) printf "%d\n", s; else print 0 }'
}

all_connected() { # all_connected NS PORT OUTPUT...
  local m o; m=$(metrics "$1" "$2") || return 1; shift 2
  for o; do grep -q "^audit_forwarder_connected{output=\"$o\"} 1" <<<"$m" || return 1; done
}

caught_up() { # caught_up NS PORT LINES OUTPUT...: every output read LINES lines, nothing unacknowledged
  local ns=$1 port=$2 lines=$3 o; shift 3
  for o; do
    [[ $(metric "$ns" "$port" audit_forwarder_lines_read_total "$o") -eq $lines ]] || return 1
    [[ $(metric "$ns" "$port" audit_forwarder_lag_bytes "$o") -eq 0 ]] || return 1
    [[ $(metric "$ns" "$port" audit_forwarder_chunks_in_flight "$o") -eq 0 ]] || return 1
  done
}

# stop NAME SECONDS: SIGTERM, bounded wait; sets RC to its exit status
stop() {
  local name=$1 secs=${2:-20} pid=${PIDOF[$1]} t0; t0=$(now_ms)
  not_daemon "$name"
  kill -TERM "$pid" 2>/dev/null || true
  local end=$(( $(date +%s) + secs ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) >= end )); then kill -KILL "$pid" 2>/dev/null || true; fail "$name did not exit within ${secs}s of SIGTERM"; fi
    sleep 0.1
  done
  RC=0; wait "$pid" || RC=$?
  step "stopped $name in $(( $(now_ms) - t0 )) ms, exit $RC"
}

expect_rc0() { # expect_rc0 NAME: stop it and require exit status 0
  stop "$1" 30
  [[ $RC -eq 0 ]] || { tail_log "${LOGOF[$1]}"; fail "$1 exited $RC after SIGTERM (expected 0)"; }
}

# no_errors NAME [ALLOWED_REGEX]: the JSON log has no ERROR line (but allowed ones)
no_errors() {
  local log=${LOGOF[$1]} allowed=${2:-} errs
  errs=$(grep -a '"level":"ERROR"' "$log" || true)
  [[ -n $allowed && -n $errs ]] && errs=$(grep -avE "$allowed" <<<"$errs" || true)
  if [[ -n $errs ]]; then
    warn "  unexpected ERROR lines in $1's log:"; printf '%s\n' "$errs" | head -5 | sed 's/^/    | /' >&2
    fail "$1 logged $(wc -l <<<"$errs") unexpected ERROR line(s)"
  fi
  local n; n=$(grep -ac '"level":"ERROR"' "$log" || true)
  [[ $n -eq 0 ]] || say "  $1: $n expected ERROR line(s) in its log"
}

# --- the pieces -------------------------------------------------------------

# receiver NAME NS PORT HTTPPORT [extra TOML for [receive]]
receiver() {
  local name=$1 ns=$2 port=$3 hport=$4 extra=${5:-}
  local conf=$SD/conf/$name.toml out=$SD/out/$name.jsonl
  cat >"$conf" <<EOF
log_format = "json"
http_listen = "127.0.0.1:$hport"
[receive]
listen = "$RCV_IP:$port"
output = "$out"
# Forward handshake: a server must not claim the client's hostname, and these
# namespaces share one UTS namespace (one hostname): name both ends.
self_hostname = "kubernetes-audit-tailer"
$extra
EOF
  start "$name" "$ns" "$AF" receive --config "$conf"
  wait_until 20 "$name /readyz" http_ok "$ns" "$hport" /readyz
}

# forwarder NS OUTPUTS_TOML: writes the config, starts it, waits until every output is connected
forwarder() {
  # Its own directory: the forwarder watches the config file's directory for
  # changes (see README "Workarounds").
  local ns=$1 outputs=$2 conf=$SD/conf/forwarder/forwarder.toml
  mkdir -p "$SD/conf/forwarder"
  # kube-apiserver creates its log when it starts; the sidecar may start first
  # (see README "Workarounds")
  touch "$SD/audit/audit.log"
  cat >"$conf" <<EOF
log_format = "json"
http_listen = "127.0.0.1:9090"
state_dir = "$SD/state"
shutdown_timeout = "10s"

[tail]
path = "$SD/audit/audit.log"
start_at = "oldest"

$outputs
EOF
  "$AF" check --config "$conf" >"$SD/log/check-config.log" 2>&1 || { tail_log "$SD/log/check-config.log"; fail "audit-forwarder check rejected $conf"; }
  # (read before the start: reading the file later would set off the config
  # watcher's busy loop, see README "Workarounds")
  local names; names=$(grep -o '^name = "[^"]*"' "$conf" | cut -d'"' -f2)
  # shorter than the default 30 s: a chunk whose last TLS records were never
  # flushed (see README) then costs 5 s instead of 30 s; counted in finish()
  sed -i 's/^\[\[outputs\]\]$/&\nack_timeout = "5s"/' "$conf"
  start forwarder "$ns" "$AF" forward --config "$conf"
  # shellcheck disable=SC2086
  wait_until 30 "the forwarder's outputs ($(echo $names)) to connect (/metrics audit_forwarder_connected)" all_connected "$ns" 9090 $names
}

# writer NS SEED [more writer args]: runs in the background (not a daemon)
writer() {
  local ns=$1 seed=$2; shift 2
  start writer "$ns" "$PY" "$WRITER" --path "$SD/audit/audit.log" --ids "$SD/written.ids" --seed "$seed" \
    --rate "$RATE" --burst 150 --burst-every 2 --max-size 1MB --max-backup 100 "$@"
  not_daemon writer
}

writer_done() { # wait for the writer (bounded) and require exit 0
  local pid=${PIDOF[writer]} end=$(( $(date +%s) + 90 ))
  while kill -0 "$pid" 2>/dev/null; do
    check_daemons
    (( $(date +%s) < end )) || fail "the writer did not finish within 90s"
    sleep 0.2
  done
  RC=0; wait "$pid" || RC=$?
  [[ $RC -eq 0 ]] || { tail_log "${LOGOF[writer]}"; fail "the writer exited $RC"; }
  WRITTEN=$(wc -l <"$SD/written.ids")
  step "writer done: $WRITTEN lines"
  say "  writer: $(tail -n1 "${LOGOF[writer]}")"
}

# check LABEL WAIT ARGS...: audit-check.py; result JSON in $SD/result-LABEL.json
check() {
  local label=$1 wait=$2 t0; shift 2
  t0=$(now_ms)
  local rc=0
  # in the background and recorded, so that a signal interrupts the wait at once
  "$PY" "$CHECK" --label "s$SCEN/$label" --wait "$wait" --json "$SD/result-$label.json" "$@" &
  local pid=$!
  echo "$pid $(starttime "$pid") check" >>"$SD/pids"
  wait "$pid" || rc=$?
  step "check $label took $(( $(now_ms) - t0 )) ms, exit $rc"
  if [[ $rc -ne 0 && -f $SD/result-$label.json ]]; then
    # every missing event in rotated files that were skipped as a whole?
    local why
    why=$("$PY" "$HERE/report.py" "$TMP" why "$SD/result-$label.json")
    if [[ -n $why ]]; then say "  => $why"; echo "s$SCEN/$label: $why" >>"$SD/notes"; fi
  fi
  return $rc
}

inject() { # inject RECEIVED_FILE: the fault INJECT asks for, before the final check
  case $INJECT in
    extra-id) echo "00000000-0000-4000-8000-000000000000" >>"$SD/written.ids"; say "  INJECT: added a written ID that was never sent" ;;
    drop-line) sed -i '1d' "$1"; say "  INJECT: removed the first line of $(basename "$1")" ;;
    unexpected) echo '{"kind":"Event","auditID":"ffffffff-ffff-4fff-bfff-ffffffffffff","stage":"ResponseComplete","level":"Metadata"}' >>"$1"; say "  INJECT: appended an unknown event to $(basename "$1")" ;;
  esac
}

cpu_seconds() { # cpu_seconds PID: user+system CPU time so far
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo "?"
}

cpu_report() { # cpu_report NAME...: CPU seconds used, for the record
  local n out=""
  for n; do out+=" $n $(cpu_seconds "${PIDOF[$n]}")s"; done
  say "  CPU used:$out"
}

# the end of every scenario: forwarder and receivers stopped by SIGTERM, logs clean
finish() { # finish FWD_ALLOWED_ERRORS RECEIVER_NAMES...
  local allowed=$1 r; shift
  cpu_report forwarder "$@"
  expect_rc0 forwarder
  no_errors forwarder "$allowed"
  local stalls; stalls=$(grep -ac 'no ack within' "${LOGOF[forwarder]}" || true)
  if (( stalls > 0 )); then
    say "  NOTE: the forwarder waited in vain for acks $stalls time(s) (no ack within 5s, then reconnected and re-sent): a sent chunk had not reached the receiver"
    echo "s$SCEN: $stalls ack timeout(s) (a sent chunk had not reached the receiver; see kind/netns/README.md)" >>"$SD/notes"
  fi
  for r; do expect_rc0 "$r"; no_errors "$r"; done
}

# topology assertions for the proxy scenarios
assert_isolated() { # assert_isolated CP_NS PX_NS
  if tcp_open "$1" "$RCV_IP" 24224; then fail "the control plane reaches the receiver $RCV_IP directly"; fi
  [[ $(ip netns exec "$2" sysctl -n net.ipv4.ip_forward) == 0 ]] || fail "ip forwarding is on in the proxy namespace"
}

# ---------------------------------------------------------------- PKI
pki() {
  local d=$TMP/pki
  mkdir -p "$d"
  (
    cd "$d"
    o() { openssl "$@" >>openssl.log 2>&1 || { cat openssl.log >&2; exit 1; }; }
    o req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=netns-test-ca"
    leaf() { # leaf NAME SAN EKU
      o req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$1"
      printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$2" "$3" >"$1.ext"
      o x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 2 -extfile "$1.ext"
    }
    leaf receiver "DNS:$RCV_NAME,DNS:receiver.cluster.test,IP:$RCV_IP" serverAuth
    leaf forwarder "DNS:audit-forwarder.cp.test" clientAuth
    leaf proxy "DNS:vpn-seed-server.test,IP:$PX_CP_IP" serverAuth
    leaf proxyclient "DNS:kube-apiserver.cp.test" clientAuth
  ) || die "certificate generation failed"
}

# ---------------------------------------------------------------- scenarios
# Every scenario: receivers up (/readyz), proxies up (port/socket), forwarder
# up with every output connected (/metrics), then the writer; delivery is
# awaited by audit-check.py --wait; then SIGTERM to the forwarder (exit 0).

scenario_1() { # direct TLS (mutual) + shared key, recommended policy, WASM filter adding the cluster id
  local cp cl; cp=$(ns_new cp); cl=$(ns_new cluster)
  veth "$cp" eth0 "$PX_CL_IP" "$cl" eth0 "$RCV_IP"
  local P=$TMP/pki cluster_id="shoot--netns--s1"
  receiver receiver "$cl" 24224 9091 "tls_cert_file = \"$P/receiver.crt\"
tls_key_file = \"$P/receiver.key\"
tls_client_ca_file = \"$P/ca.crt\"
shared_key = \"$SHARED_KEY\""
  local filter_cluster=$cluster_id
  [[ $INJECT == wrong-cluster ]] && { filter_cluster="shoot--other"; say "  INJECT: the filter adds clusterID=$filter_cluster"; }
  forwarder "$cp" "[[outputs]]
name = \"cluster\"
host = \"$RCV_IP\"
port = 24224
tls = true
tls_ca_file = \"$P/ca.crt\"
tls_cert_file = \"$P/forwarder.crt\"
tls_key_file = \"$P/forwarder.key\"
tls_server_name = \"$RCV_NAME\"
shared_key = \"$SHARED_KEY\"
self_hostname = \"kube-apiserver-netns\"
policy = \"recommended\"
filter_batch_events = 64

[[outputs.filters]]
wasm = \"$WASM\"
config = { cluster = \"$filter_cluster\", extra = { landscape = \"netns\" } }
on_error = \"stop\"
# the default 100ms per call is too short for a 2 MB event in a debug build
# on a loaded 2-core machine (seen: the output stopped on the deadline)
timeout = \"2s\""
  writer "$cp" 101 --count "$EVENTS" --request-received 0.1 --big-every 1500 --big-bytes 2MB
  writer_done
  local args=(--written "$SD/written.ids" --audit-log "$SD/audit/audit*.log" --received "$SD/out/receiver.jsonl"
              --policy recommended --check-level --require-field "clusterID=$cluster_id" --require-field landscape=netns)
  check wait "$WAIT_SECS" "${args[@]}" || fail "not every event the recommended policy keeps arrived"
  wait_until 20 "the forwarder to have read and acknowledged everything" caught_up "$cp" 9090 "$WRITTEN" cluster
  finish "" receiver
  inject "$SD/out/receiver.jsonl"
  check final 0 "${args[@]}" || fail "final check"
}

scenario_2() { # konnectivity: UDS -> socat -> tinyproxy -> receiver; the cp namespace has no network at all
  local cp px cl; cp=$(ns_new cp); px=$(ns_new proxy); cl=$(ns_new cluster)
  veth "$px" eth1 "$PX_CL_IP" "$cl" eth0 "$RCV_IP"
  # the target name is resolved on the far side (tinyproxy in the proxy namespace)
  mkdir -p "/etc/netns/$px"
  printf '127.0.0.1 localhost\n%s %s\n' "$RCV_IP" "$RCV_NAME" >"/etc/netns/$px/hosts"
  [[ $(ip -n "$cp" -o link show | wc -l) -eq 1 ]] || fail "the cp namespace has more than lo"
  local P=$TMP/pki sock=$SD/konnectivity/konnectivity-server.socket
  mkdir -p "$(dirname "$sock")"
  receiver receiver "$cl" 24224 9091 "tls_cert_file = \"$P/receiver.crt\"
tls_key_file = \"$P/receiver.key\"
shared_key = \"$SHARED_KEY\""
  cat >"$SD/conf/tinyproxy.conf" <<EOF
Port 8888
Listen 127.0.0.1
Allow 127.0.0.1
Timeout 600
MaxClients 64
LogLevel Info
EOF
  start tinyproxy "$px" tinyproxy -d -c "$SD/conf/tinyproxy.conf"
  wait_until 20 "tinyproxy on 127.0.0.1:8888" tcp_open "$px" 127.0.0.1 8888
  start socat "$px" socat "UNIX-LISTEN:$sock,fork" TCP:127.0.0.1:8888
  wait_until 20 "socat on $sock" uds_open "$sock"
  forwarder "$cp" "[[outputs]]
name = \"cluster\"
host = \"$RCV_NAME\"
port = 24224
tls = true
tls_ca_file = \"$P/ca.crt\"
shared_key = \"$SHARED_KEY\"
self_hostname = \"kube-apiserver-netns\"

[outputs.proxy]
uds = \"$sock\""
  if ip netns exec "$cp" getent hosts "$RCV_NAME" >/dev/null 2>&1; then fail "$RCV_NAME resolves in the cp namespace"; fi
  writer "$cp" 202 --count "$EVENTS"
  writer_done
  local args=(--written "$SD/written.ids" --audit-log "$SD/audit/audit*.log" --received "$SD/out/receiver.jsonl")
  check wait "$WAIT_SECS" "${args[@]}" || fail "not every event arrived through the tunnel"
  wait_until 20 "the forwarder to have read and acknowledged everything" caught_up "$cp" 9090 "$WRITTEN" cluster
  grep -q "CONNECT" "${LOGOF[tinyproxy]}" || fail "tinyproxy logged no CONNECT"
  finish "" receiver
  inject "$SD/out/receiver.jsonl"
  check final 0 "${args[@]}" || fail "final check"
}

scenario_3() { # mTLS CONNECT proxy: stunnel (verifyChain, requireCert) -> squid -> receiver (TLS + key inside)
  local cp px cl; cp=$(ns_new cp); px=$(ns_new proxy); cl=$(ns_new cluster)
  veth "$cp" eth0 "$CP_IP" "$px" eth0 "$PX_CP_IP"
  veth "$px" eth1 "$PX_CL_IP" "$cl" eth0 "$RCV_IP"
  assert_isolated "$cp" "$px"
  local P=$TMP/pki
  receiver receiver "$cl" 24224 9091 "tls_cert_file = \"$P/receiver.crt\"
tls_key_file = \"$P/receiver.key\"
shared_key = \"$SHARED_KEY\""
  local sq=$SD/squid; mkdir -p "$sq"; chmod 777 "$sq"
  cat >"$SD/conf/squid.conf" <<EOF
http_port 127.0.0.1:3128
acl local src 127.0.0.1/32
http_access allow local
http_access deny all
cache deny all
dns_nameservers 127.0.0.1
pinger_enable off
shutdown_lifetime 0 seconds
pid_filename $sq/squid.pid
cache_log $sq/cache.log
access_log $sq/access.log
coredump_dir $sq
EOF
  start squid "$px" squid -N -f "$SD/conf/squid.conf"
  wait_until 30 "squid on 127.0.0.1:3128" tcp_open "$px" 127.0.0.1 3128
  cat >"$SD/conf/stunnel.conf" <<EOF
foreground = yes
pid =
debug = notice
[connect-proxy]
accept = $PX_CP_IP:8443
connect = 127.0.0.1:3128
cert = $P/proxy.crt
key = $P/proxy.key
CAfile = $P/ca.crt
verifyChain = yes
requireCert = yes
EOF
  start stunnel "$px" stunnel "$SD/conf/stunnel.conf"
  wait_until 20 "stunnel on $PX_CP_IP:8443 (from the cp namespace)" tcp_open "$cp" "$PX_CP_IP" 8443
  # the proxy refuses a client without a certificate
  if ip netns exec "$cp" curl -s -m 5 -o /dev/null -p --proxy "https://$PX_CP_IP:8443" --proxy-cacert "$P/ca.crt" \
      "http://$RCV_IP:24224/" 2>/dev/null; then
    fail "the mTLS proxy accepted a client without a certificate"
  fi
  wait_until 10 "stunnel to log the refused client" grep -q "peer did not return a certificate" "${LOGOF[stunnel]}"
  forwarder "$cp" "[[outputs]]
name = \"cluster\"
host = \"$RCV_IP\"
port = 24224
tls = true
tls_ca_file = \"$P/ca.crt\"
tls_server_name = \"$RCV_NAME\"
shared_key = \"$SHARED_KEY\"
self_hostname = \"kube-apiserver-netns\"

[outputs.proxy]
url = \"https://$PX_CP_IP:8443\"
ca_file = \"$P/ca.crt\"
cert_file = \"$P/proxyclient.crt\"
key_file = \"$P/proxyclient.key\"
server_name = \"vpn-seed-server.test\""
  writer "$cp" 303 --count "$EVENTS" --big-every 1500 --big-bytes 3MB
  writer_done
  local args=(--written "$SD/written.ids" --audit-log "$SD/audit/audit*.log" --received "$SD/out/receiver.jsonl")
  check wait "$WAIT_SECS" "${args[@]}" || fail "not every event arrived through the mTLS proxy"
  wait_until 20 "the forwarder to have read and acknowledged everything" caught_up "$cp" 9090 "$WRITTEN" cluster
  finish "" receiver
  # squid logs a tunnel when it closes
  wait_until 10 "squid's access log to show CONNECT $RCV_IP:24224" grep -q "CONNECT $RCV_IP:24224" "$sq/access.log"
  inject "$SD/out/receiver.jsonl"
  check final 0 "${args[@]}" || fail "final check"
}

scenario_4() { # two outputs, two policies (preset minimal; a custom policy file with omitManagedFields)
  local cp cl; cp=$(ns_new cp); cl=$(ns_new cluster)
  veth "$cp" eth0 "$PX_CL_IP" "$cl" eth0 "$RCV_IP"
  local pol=$SD/conf/security-policy.yaml
  cat >"$pol" <<'EOF'
# A provider's security team: every write with its bodies (without
# managedFields), reads of secrets at Metadata, nothing from the scheduler
# or the leader-election leases, no probes.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
omitManagedFields: true
rules:
  - level: None
    users: ["system:kube-scheduler"]
  - level: None
    resources: [{group: "coordination.k8s.io", resources: ["leases"]}]
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
  - level: Metadata
    resources: [{group: "", resources: ["secrets", "configmaps"]}]
  - level: RequestResponse
    verbs: ["create", "update", "patch", "delete"]
  - level: Metadata
    verbs: ["get"]
    namespaces: ["kube-system"]
EOF
  "$AF" policy eval --policy "$pol" </dev/null >/dev/null 2>"$SD/log/policy-check.log" || { tail_log "$SD/log/policy-check.log"; fail "the custom policy is invalid"; }
  receiver owner "$cl" 24224 9091
  receiver security "$cl" 24225 9092
  forwarder "$cp" "[[outputs]]
name = \"owner\"
host = \"$RCV_IP\"
port = 24224
policy = \"minimal\"

[[outputs]]
name = \"security\"
host = \"$RCV_IP\"
port = 24225
policy = \"$pol\"
gzip = true"
  writer "$cp" 404 --count "$EVENTS" --request-received 0.1 --rr-fraction 0.08
  writer_done
  local a_owner=(--written "$SD/written.ids" --audit-log "$SD/audit/audit*.log" --received "$SD/out/owner.jsonl" --policy minimal --check-level)
  local a_sec=(--written "$SD/written.ids" --audit-log "$SD/audit/audit*.log" --received "$SD/out/security.jsonl" --policy "$pol" --check-level)
  check owner "$WAIT_SECS" "${a_owner[@]}" || fail "output owner (minimal) did not get exactly its events"
  check security "$WAIT_SECS" "${a_sec[@]}" || fail "output security (custom policy) did not get exactly its events"
  wait_until 20 "the forwarder to have read and acknowledged everything" caught_up "$cp" 9090 "$WRITTEN" owner security
  local dropped_owner dropped_sec
  dropped_owner=$(metric "$cp" 9090 audit_forwarder_events_dropped_total owner)
  dropped_sec=$(metric "$cp" 9090 audit_forwarder_events_dropped_total security)
  say "  forwarder: events dropped by policy: owner $dropped_owner, security $dropped_sec"
  finish "" owner security
  inject "$SD/out/owner.jsonl"
  local rc=0
  check owner-final 0 "${a_owner[@]}" || rc=1
  check security-final 0 "${a_sec[@]}" || rc=1
  [[ $rc -eq 0 ]] || fail "final check"
}

scenario_5() { # the receiver is SIGKILLed mid-stream, the log rotates meanwhile, the receiver comes back
  local cp cl; cp=$(ns_new cp); cl=$(ns_new cluster)
  veth "$cp" eth0 "$PX_CL_IP" "$cl" eth0 "$RCV_IP"
  local out=$SD/out/receiver.jsonl count=$(( EVENTS * 4 / 3 ))
  receiver receiver "$cl" 24224 9091
  forwarder "$cp" "[[outputs]]
name = \"cluster\"
host = \"$RCV_IP\"
port = 24224
retry_max = \"1s\""
  # small files: many rotations; every rotated file kept while the forwarder is behind
  writer "$cp" 505 --count "$count" --max-size 512KB --max-backup 1000
  local kill_at=$(( count / 5 ))
  wait_until 60 "$kill_at events at the receiver" received_at_least "$out" "$kill_at"
  local pid=${PIDOF[receiver]}
  not_daemon receiver
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
  local at_kill rot_kill ids_kill
  at_kill=$(wc -l <"$out"); rot_kill=$(rotated); ids_kill=$(wc -l <"$SD/written.ids")
  say "  receiver SIGKILLed with $at_kill lines in its output ($ids_kill written, $rot_kill rotated files)"
  wait_until 20 "the forwarder to notice (audit_forwarder_connected 0)" output_down "$cp" cluster
  wait_until 60 "1000 more events and 3 more rotations while the receiver is down" \
    more_written "$ids_kill" 1000 "$rot_kill" 3
  local lag; lag=$(metric "$cp" 9090 audit_forwarder_lag_bytes cluster)
  [[ $(wc -l <"$out") -eq $at_kill ]] || fail "the receiver output grew while the receiver was dead"
  say "  restarting the receiver: $(( $(wc -l <"$SD/written.ids") - ids_kill )) events and $(( $(rotated) - rot_kill )) rotations later, forwarder lag ${lag} bytes"
  (( lag > 0 )) || fail "the forwarder reports no lag while the receiver is down"
  receiver receiver "$cl" 24224 9091
  writer_done
  local args=(--written "$SD/written.ids" --audit-log "$SD/audit/audit*.log" --received "$out")
  check wait "$WAIT_SECS" "${args[@]}" || fail "events were lost while the receiver was down"
  wait_until 30 "the forwarder to have read and acknowledged everything" caught_up "$cp" 9090 "$WRITTEN" cluster
  local resent reconnects connerr gaps
  resent=$(metric "$cp" 9090 audit_forwarder_chunks_resent_total cluster)
  reconnects=$(metric "$cp" 9090 audit_forwarder_reconnects_total cluster)
  connerr=$(metric "$cp" 9090 audit_forwarder_connect_errors_total cluster)
  gaps=$(metric "$cp" 9090 audit_forwarder_gaps_total cluster)
  say "  forwarder: chunks resent $resent, reconnects $reconnects, connect errors $connerr, gaps $gaps; rotated files now $(rotated), none deleted"
  (( connerr + reconnects > 0 )) || fail "the forwarder counted no connection error while the receiver was down"
  [[ $gaps -eq 0 ]] || fail "the forwarder reports $gaps gap(s)"
  # connection errors while the receiver was down are expected (WARN; ERROR only if they are logged as such)
  finish "connect|connection|refused|unreachable|reset|closed|broken pipe|ack" receiver
  inject "$out"
  check final 0 "${args[@]}" || fail "final check"
}

received_at_least() { [[ -f $1 ]] && (( $(wc -l <"$1") >= $2 )); }
rotated() { find "$SD/audit" -maxdepth 1 -name 'audit-*.log*' | wc -l; }
output_down() { [[ $(metric "$1" 9090 audit_forwarder_connected "$2") -eq 0 ]]; }
more_written() { # more_written IDS_BEFORE N ROT_BEFORE R
  (( $(wc -l <"$SD/written.ids") >= $1 + $2 )) && (( $(rotated) >= $3 + $4 ))
}

# ---------------------------------------------------------------- main
run_scenario() {
  SCEN=$1
  SD=$TMP/s$SCEN
  T_SCEN=$(now_ms)
  mkdir -p "$SD"/{log,conf,out,state,audit}
  : >"$SD/pids"; : >"$SD/netns"; : >"$SD/written.ids"
  # In the background, so that the parent's signal traps run at once.
  (
    trap 'on_err $LINENO "$BASH_COMMAND"' ERR
    trap 'step "cleanup"; cleanup_dir "$SD"; step "cleaned up"' EXIT
    trap 'trap - ERR; echo "FAIL: interrupted" >"$SD/status"; exit 143' TERM
    "scenario_$SCEN"
    echo PASS >"$SD/status"
  ) &
  CHILD=$!
  local end=0
  while kill -0 "$CHILD" 2>/dev/null; do
    wait "$CHILD" 2>/dev/null || true
    if [[ -n $INTERRUPTED ]]; then
      # bounded: the subshell's own cleanup gets 20 s, then cleanup_all takes over
      (( end )) || end=$(( $(date +%s) + 20 ))
      (( $(date +%s) < end )) || break
      sleep 0.1
    fi
  done
  CHILD=""
  [[ -f $SD/status ]] || echo "FAIL: aborted" >"$SD/status"
  step "scenario ended: $(cat "$SD/status")"
  if [[ $(cat "$SD/status") != PASS ]] || (( $(now_ms) - T_SCEN > 30000 )); then
    say "  steps (slow or failed):"; sed 's/^/    /' "$SD/steps.log"
  fi
  [[ -z $INTERRUPTED ]] || { warn "interrupted"; exit "$INTERRUPTED"; }
}

say "audit-forwarder netns scenarios: ${SCENARIOS[*]}  (binary $AF_BIN, temp $TMP)"
[[ -z $INJECT ]] || say "INJECT=$INJECT: the run is expected to FAIL"
T0=$(date +%s%N)
pki
for s in "${SCENARIOS[@]}"; do
  say ""
  say "== scenario $s: ${TITLE[$s]}"
  t=$(date +%s%N)
  run_scenario "$s"
  awk -v a="$t" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f\n", (b - a) / 1e9 }' >"$TMP/s$s/seconds"
  "$PY" "$HERE/report.py" "$TMP" line "$s"
done

TOTAL=$(awk -v a="$T0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
say ""
"$PY" "$HERE/report.py" "$TMP" table "$TOTAL" "${SCENARIOS[@]}"
for s in "${SCENARIOS[@]}"; do [[ $(cat "$TMP/s$s/status") == PASS ]] || exit 1; done
exit 0
