# Shared by kind/up.sh, kind/down.sh and kind/scenarios/run.sh (sourced, not run).
# shellcheck shell=bash
shopt -s inherit_errexit 2>/dev/null || true   # bash >= 4.4

KIND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this file
ROOT="$(cd "$KIND_DIR/.." && pwd)"
CLUSTER="${CLUSTER:-audit-forwarder}"
CONTEXT="kind-$CLUSTER"
NODE="$CLUSTER-control-plane"
IMAGE="${IMAGE:-audit-forwarder:dev}"
RUN_DIR="$KIND_DIR/.run"
CERTS="$RUN_DIR/certs"
# Where the sidecar finds its files on the control-plane node (hostPath
# volumes of kind/node/kubeadm-patches/kube-apiserver+strategic.yaml).
NODE_FWD_DIR=/etc/kubernetes/audit-forwarder
NODE_PROXY_DIR=/etc/kubernetes/konnectivity-mtls
NODE_STATE_DIR=/var/lib/audit-forwarder
APISERVER_POD="kube-apiserver-$NODE"
RECEIVER_SELECTOR="app.kubernetes.io/name=audit-receiver"
TRAFFIC_NS=audit-traffic

log() { printf '\n[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (see kind/README.md, prerequisites)"
  done
}
k() { kubectl --context "$CONTEXT" "$@"; }
node_exec() { docker exec "$NODE" "$@"; }

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 2 s until it
# succeeds; fails the script after SECONDS.
wait_until() {
  local timeout="$1" what="$2" end
  shift 2
  end=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 2
  done
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; }

# The node's clock (the audit log's timestamps come from it).
node_now() { node_exec date -u +%s.%N; }
node_now_rfc3339() { node_exec date -u +%Y-%m-%dT%H:%M:%SZ; }

# Copies the forwarder's certificates, the custom policies and the mTLS
# proxy's certificates into the control-plane node (root-owned, keys 0600:
# the sidecar runs as root, see the kubeadm patch).
install_node_files() {
  local f
  node_exec mkdir -p "$NODE_FWD_DIR/tls" "$NODE_FWD_DIR/policies" "$NODE_PROXY_DIR"
  for f in ca.crt client.crt client.key proxy-ca.crt proxy-client.crt proxy-client.key; do
    docker cp "$CERTS/$f" "$NODE:$NODE_FWD_DIR/tls/$f" >/dev/null
  done
  for f in "$KIND_DIR"/config/policies/*.yaml; do
    docker cp "$f" "$NODE:$NODE_FWD_DIR/policies/$(basename "$f")" >/dev/null
  done
  for f in proxy-server.crt proxy-server.key proxy-ca.crt; do
    docker cp "$CERTS/$f" "$NODE:$NODE_PROXY_DIR/$f" >/dev/null
  done
  node_exec sh -c "chown -R root:root '$NODE_FWD_DIR' '$NODE_PROXY_DIR' &&
    chmod 600 '$NODE_FWD_DIR'/tls/*.key '$NODE_PROXY_DIR'/*.key"
}

# render_forwarder_config NAME: kind/config/forwarder/NAME.toml with the shared key.
render_forwarder_config() {
  local key
  key="$(cat "$CERTS/shared-key")"
  sed "s/@SHARED_KEY@/$key/g" "$KIND_DIR/config/forwarder/$1.toml"
}

# install_forwarder_config NAME [--no-wait]: makes NAME the sidecar's configuration.
# The sidecar watches its directory and reloads (drains, checkpoints, restarts
# its outputs); this waits for that and fails if the reload was rejected.
# Outputs of a scenario are named after it (s1-owner, ...) and start at the
# end of the live log (start_at = "end"); a checkpoint left from an earlier
# run of the same scenario is removed so that they start fresh.
install_forwarder_config() {
  local name="$1" wait="${2:-}" rendered current since out
  rendered="$(render_forwarder_config "$name")"
  current="$(node_exec cat "$NODE_FWD_DIR/config.toml" 2>/dev/null || true)"
  if [ "$rendered" = "$current" ]; then
    log "forwarder config $name.toml is already installed"
    return 0
  fi
  for out in $(printf '%s\n' "$rendered" | sed -n 's/^name = "\(.*\)"/\1/p'); do
    if ! printf '%s\n' "$current" | grep -qx "name = \"$out\""; then
      node_exec sh -c "rm -f '$NODE_STATE_DIR/checkpoint-$out.json' '$NODE_STATE_DIR/checkpoint-$out@'*.json"
    fi
  done
  since="$(node_now_rfc3339)"
  # Write, then rename: the forwarder never sees a half-written file.
  printf '%s\n' "$rendered" | docker exec -i "$NODE" sh -c \
    "mkdir -p '$NODE_FWD_DIR' && cat > '$NODE_FWD_DIR/.config.toml.new' &&
     chmod 600 '$NODE_FWD_DIR/.config.toml.new' &&
     mv -f '$NODE_FWD_DIR/.config.toml.new' '$NODE_FWD_DIR/config.toml'"
  log "installed forwarder config $name.toml"
  [ "$wait" != "--no-wait" ] || return 0
  local end=$((SECONDS + 120)) logs
  while :; do
    logs="$(k -n kube-system logs "$APISERVER_POD" -c audit-forwarder --since-time="$since" 2>/dev/null || true)"
    if printf '%s' "$logs" | grep -q 'configuration reload rejected'; then
      printf '%s\n' "$logs" | grep 'configuration reload rejected' >&2
      die "the forwarder rejected $name.toml"
    fi
    if printf '%s' "$logs" | grep -Eq 'configuration reloaded|forwarder starting'; then
      break
    fi
    [ "$SECONDS" -lt "$end" ] || die "timed out waiting for the forwarder to load $name.toml"
    sleep 2
  done
}

forwarder_running() {
  local s
  s="$(k -n kube-system get pod "$APISERVER_POD" \
    -o jsonpath='{.status.containerStatuses[?(@.name=="audit-forwarder")].state.running.startedAt}' 2>/dev/null)"
  [ -n "$s" ]
}

apiserver_ready() { k get --raw /readyz >/dev/null 2>&1; }

# The kubelet started the static pod before the image was loaded into the
# node (kind load needs the cluster), and backs off pulling it for up to
# 5 minutes: park the manifest and put it back, which restarts the pod at
# once. The apiserver is down for ~30 s meanwhile.
restart_apiserver_pod() {
  log "restarting the kube-apiserver static pod (sidecars pick up the loaded image)"
  node_exec mv /etc/kubernetes/manifests/kube-apiserver.yaml /etc/kubernetes/kube-apiserver.yaml.parked
  wait_until 120 "the kube-apiserver pod to stop" \
    sh -c "[ -z \"\$(docker exec '$NODE' crictl pods --name '$APISERVER_POD' --state ready -q)\" ]"
  node_exec mv /etc/kubernetes/kube-apiserver.yaml.parked /etc/kubernetes/manifests/kube-apiserver.yaml
  wait_until 240 "the apiserver to be ready again" apiserver_ready
  wait_until 240 "the audit-forwarder sidecar to run" forwarder_running
}

apply_receivers() {
  k apply -f "$KIND_DIR/manifests/namespaces.yaml" >/dev/null
  "$KIND_DIR/gen-certs.sh" --apply --context "$CONTEXT" >/dev/null
  local dir
  for dir in "$@"; do
    k apply -k "$KIND_DIR/manifests/$dir" >/dev/null
  done
}

# restart_receivers NS...: fresh receiver pods (their `kubectl logs` then hold
# only this scenario), old pods gone, so no connection goes to them.
restart_receivers() {
  local ns old
  for ns in "$@"; do
    old="$(k -n "$ns" get pods -l "$RECEIVER_SELECTOR" -o name)"
    k -n "$ns" rollout restart deployment/audit-receiver >/dev/null
    k -n "$ns" rollout status deployment/audit-receiver --timeout=180s >/dev/null ||
      die "receiver in $ns did not become ready"
    if [ -n "$old" ]; then
      # shellcheck disable=SC2086 # one argument per pod
      k -n "$ns" wait --for=delete $old --timeout=120s >/dev/null 2>&1 || true
    fi
  done
}

receiver_pod() {
  k -n "$1" get pods -l "$RECEIVER_SELECTOR" --field-selector=status.phase=Running \
    -o jsonpath='{.items[0].metadata.name}'
}

# receiver_metric NS NAME: a metric of the receiver pod, through the apiserver's pod proxy.
receiver_metric() {
  local pod
  pod="$(receiver_pod "$1")" || return 1
  [ -n "$pod" ] || return 1
  k get --raw "/api/v1/namespaces/$1/pods/$pod:9090/proxy/metrics" |
    awk -v m="audit_forwarder_$2" '$1 == m || index($1, m "{") == 1 { print $2; exit }'
}

receiver_connected() {
  local n
  n="$(receiver_metric "$1" receiver_connections_active)" || return 1
  [ "${n:-0}" -ge 1 ] 2>/dev/null
}

wait_receivers_connected() {
  local ns
  for ns in "$@"; do
    wait_until 180 "the forwarder to connect to the receiver in $ns" receiver_connected "$ns"
    log "receiver in $ns: the forwarder is connected"
  done
}

# generate_traffic RUN_ID [COUNT]: audit events of our own, in $TRAFFIC_NS:
# ConfigMaps created, labelled (patch), read, listed and deleted, a Secret,
# a Deployment with zero replicas (RequestResponse under "recommended").
generate_traffic() {
  local id="$1" count="${2:-10}" i label="audit-forwarder.test/run"
  k create namespace "$TRAFFIC_NS" --dry-run=client -o yaml | k apply -f - >/dev/null
  for i in $(seq 1 "$count"); do
    k -n "$TRAFFIC_NS" create configmap "$id-$i" --from-literal=i="$i" >/dev/null
    k -n "$TRAFFIC_NS" label configmap "$id-$i" "$label=$id" >/dev/null
    k -n "$TRAFFIC_NS" get configmap "$id-$i" -o name >/dev/null
  done
  k -n "$TRAFFIC_NS" get configmaps -l "$label=$id" -o name >/dev/null
  k -n "$TRAFFIC_NS" create secret generic "$id-secret" --from-literal=token=not-a-secret >/dev/null
  k -n "$TRAFFIC_NS" label secret "$id-secret" "$label=$id" >/dev/null
  k -n "$TRAFFIC_NS" create deployment "$id-deploy" --image=registry.k8s.io/pause:3.10 --replicas=0 >/dev/null
  k -n "$TRAFFIC_NS" label deployment "$id-deploy" "$label=$id" >/dev/null
  k -n "$TRAFFIC_NS" delete configmaps,secrets,deployments -l "$label=$id" --wait=false >/dev/null
  log "traffic $id: $count ConfigMaps, a Secret, a Deployment created, changed, read, deleted"
}

# assert_delivery ARGS...: kind/scenarios/assert.py with the cluster's settings.
assert_delivery() {
  python3 "$KIND_DIR/scenarios/assert.py" --node "$NODE" --context "$CONTEXT" \
    --traffic-namespace "$TRAFFIC_NS" "$@"
}
