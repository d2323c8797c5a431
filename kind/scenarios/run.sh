#!/usr/bin/env bash
# Runs the kind scenarios; each asserts that every audit event the
# apiserver wrote while it ran, and that the output's policy keeps, arrived
# at the receiver (and nothing the policy drops).
#
#   kind/scenarios/run.sh 1|2|3|4|5|all
#
#   1  direct: mutual TLS + shared key, "recommended", add-cluster-id WASM filter
#   2  konnectivity-server (http-connect, Unix socket) + proxy-agents
#   3  an HTTP CONNECT proxy with mutual TLS (konnectivity-server over TCP/mTLS)
#   4  two outputs with different policies, two receivers, exact sets
#   5  the receiver scaled to zero while events are written, then back: none lost
#
# The cluster is created first if it does not exist (kind/up.sh). Each
# scenario switches the sidecar's config (kind/config/forwarder/sN-*.toml,
# live reload), restarts the receiver(s), waits until the forwarder is
# connected, notes the node's time T0, generates its own traffic, and then
# kind/scenarios/assert.py compares the audit log files on the node (every
# event with stageTimestamp >= T0) with the receivers' `kubectl logs`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

need kind docker kubectl python3

ensure_cluster() {
  if ! cluster_exists || ! forwarder_running; then
    "$KIND_DIR/up.sh"
  fi
}

# begin N CONFIG RECEIVER_NS...: config installed, receivers fresh and
# connected; prints T0.
begin() {
  local n="$1" config="$2"
  shift 2
  install_forwarder_config "$config"
  restart_receivers "$@"
  wait_receivers_connected "$@"
  mkdir -p "$RUN_DIR/scenario-$n"
  rm -f "$RUN_DIR/scenario-$n/assert.txt"
  node_now
}

run_id() { printf 's%s-%s' "$1" "$(date +%H%M%S)"; }

# check N ARGS...: assert.py, its report also kept in kind/.run/scenario-N/assert.txt.
check() {
  local n="$1"
  shift
  assert_delivery "$@" | tee -a "$RUN_DIR/scenario-$n/assert.txt"
}

scenario_1() {
  log "scenario 1: direct, mutual TLS + shared key, recommended + add-cluster-id"
  apply_receivers receiver
  local t0
  t0="$(begin 1 s1-direct audit-system)"
  generate_traffic "$(run_id 1)" 10
  check 1 --since "$t0" \
    --output s1-owner audit-system recommended \
    --expect-field s1-owner clusterID kind-audit-forwarder \
    --expect-field s1-owner landscape kind \
    --max-duplicates 0
}

cannot_resolve_on_node() {
  if node_exec getent hosts audit-receiver.audit-system.svc.cluster.local >/dev/null 2>&1; then
    log "note: the node resolves the receiver's cluster DNS name; delivery does not by itself prove the tunnel"
  else
    log "the control-plane node cannot resolve audit-receiver.audit-system.svc.cluster.local: events can only arrive through the proxy"
  fi
}

scenario_2() {
  log "scenario 2: konnectivity-server in http-connect mode on a Unix socket, proxy-agents in the cluster"
  apply_receivers receiver konnectivity
  k -n kube-system rollout status daemonset/konnectivity-agent --timeout=240s
  cannot_resolve_on_node
  local t0
  t0="$(begin 2 s2-konnectivity audit-system)"
  generate_traffic "$(run_id 2)" 10
  check 2 --since "$t0" \
    --output s2-owner audit-system recommended \
    --expect-field s2-owner clusterID kind-audit-forwarder \
    --max-duplicates 0
  k -n kube-system logs "$APISERVER_POD" -c konnectivity-server --tail=5 >&2 || true
}

scenario_3() {
  log "scenario 3: HTTP CONNECT over mutual TLS (konnectivity-server on 127.0.0.1:8131, client certificates required)"
  apply_receivers receiver konnectivity
  k -n kube-system rollout status daemonset/konnectivity-agent-mtls --timeout=240s
  cannot_resolve_on_node
  local t0
  t0="$(begin 3 s3-mtls-proxy audit-system)"
  generate_traffic "$(run_id 3)" 10
  check 3 --since "$t0" \
    --output s3-owner audit-system recommended \
    --expect-field s3-owner clusterID kind-audit-forwarder \
    --max-duplicates 0
  k -n kube-system logs "$APISERVER_POD" -c konnectivity-server-mtls --tail=5 >&2 || true
}

scenario_4() {
  log "scenario 4: two outputs, two policies, two receivers"
  apply_receivers receiver receiver-security
  local t0
  t0="$(begin 4 s4-two-outputs audit-system audit-security)"
  generate_traffic "$(run_id 4)" 10
  # Each receiver must get exactly what its policy keeps: nothing missing,
  # nothing the policy drops (assert.py's "unexpected"), levels as decided.
  check 4 --since "$t0" \
    --output s4-owner audit-system recommended \
    --output s4-security audit-security /etc/audit-forwarder/policies/security.yaml \
    --expect-field s4-owner clusterID kind-audit-forwarder \
    --max-duplicates 0
}

scenario_5() {
  log "scenario 5: receiver unavailable for a while"
  apply_receivers receiver
  local t0 dir pod follower id
  t0="$(begin 5 s5-receiver-down audit-system)"
  dir="$RUN_DIR/scenario-5"
  rm -f "$dir"/*.log
  id="$(run_id 5)"
  generate_traffic "$id-before" 5
  log "everything so far delivered, before the receiver goes away?"
  check 5 --since "$t0" --output s5-owner audit-system recommended --timeout 120
  # The old pod's output disappears with it: keep a copy of its log stream.
  pod="$(receiver_pod audit-system)"
  k -n audit-system logs -f "$pod" > "$dir/$pod.log" 2>/dev/null &
  follower=$!
  log "scaling the receiver to 0 replicas"
  k -n audit-system scale deployment/audit-receiver --replicas=0 >/dev/null
  k -n audit-system wait --for=delete "pod/$pod" --timeout=120s >/dev/null
  local end=$((SECONDS + 60))
  while kill -0 "$follower" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 1; done
  if kill -0 "$follower" 2>/dev/null; then
    log "note: kubectl logs -f $pod did not end with the pod; stopping it"
    kill "$follower" 2>/dev/null || true
  fi
  wait "$follower" 2>/dev/null || true
  generate_traffic "$id-down" 10
  log "receiver down for 30 s more while the apiserver keeps writing"
  sleep 30
  k -n kube-system logs "$APISERVER_POD" -c audit-forwarder --since=60s 2>/dev/null |
    grep -E 'connection failed|refused|retry' | tail -n 3 >&2 || true
  log "scaling the receiver back to 1 replica"
  k -n audit-system scale deployment/audit-receiver --replicas=1 >/dev/null
  k -n audit-system rollout status deployment/audit-receiver --timeout=180s >/dev/null
  wait_receivers_connected audit-system
  generate_traffic "$id-after" 5
  # Resending after a reconnect may duplicate a chunk across the two pods
  # (each deduplicates only its own): allowed, and counted.
  check 5 --since "$t0" --output s5-owner audit-system recommended \
    --saved-logs "$dir" --max-duplicates 10000
}

main() {
  [ $# -eq 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
  ensure_cluster
  local list=("$1") n failed=()
  [ "$1" = all ] && list=(1 2 3 4 5)
  for n in "${list[@]}"; do
    case "$n" in
      1|2|3|4|5) ;;
      *) die "unknown scenario $n (1-5 or all)" ;;
    esac
    # A subshell outside any `if`, so that `set -e` holds inside it.
    set +e
    (set -e; "scenario_$n")
    local rc=$?
    set -e
    if [ "$rc" = 0 ]; then
      log "scenario $n: PASSED"
    else
      log "scenario $n: FAILED"
      failed+=("$n")
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    die "failed scenarios: ${failed[*]}"
  fi
  log "all requested scenarios passed: ${list[*]}"
}

main "$@"
