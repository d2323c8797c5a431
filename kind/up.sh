#!/usr/bin/env bash
# Creates (or completes) the kind cluster of the scenarios:
#   1. certificates and shared key (kind/gen-certs.sh, into kind/.run/certs)
#   2. the image audit-forwarder:dev (docker build, unless it exists)
#   3. kind create cluster --config kind/cluster.yaml (auditing on, sidecars
#      added by the kubeadm patch), kind load docker-image
#   4. the forwarder's files into the control-plane node, scenario 1's config
#   5. a restart of the kube-apiserver static pod, so its sidecars start with
#      the loaded image
#   6. namespaces, Secrets and the receiver (kind/manifests/receiver)
# Idempotent: run it again to finish an interrupted setup.
#   CLUSTER=name   cluster name (default audit-forwarder)
#   IMAGE=ref      image (default audit-forwarder:dev); REBUILD=1 rebuilds it
#   KIND_NODE_IMAGE=kindest/node:...  another node image than kind/cluster.yaml's
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=scenarios/lib.sh
source "$(dirname "$0")/scenarios/lib.sh"

need kind docker kubectl openssl python3
mkdir -p "$RUN_DIR/audit-log"
"$KIND_DIR/gen-certs.sh" --out "$CERTS"

if [ "${REBUILD:-0}" = 1 ] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "building $IMAGE (Dockerfile at the repository root)"
  docker build -t "$IMAGE" "$ROOT"
fi

fresh=0
if ! cluster_exists; then
  log "creating kind cluster $CLUSTER"
  # kind/cluster.yaml's hostPaths are relative to the repository root.
  (cd "$ROOT" && kind create cluster --name "$CLUSTER" --config kind/cluster.yaml \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s)
  fresh=1
fi
log "loading $IMAGE into the nodes"
kind load docker-image "$IMAGE" --name "$CLUSTER"

install_node_files
if [ "$fresh" = 1 ] || [ "${REBUILD:-0}" = 1 ] || ! forwarder_running; then
  install_forwarder_config s1-direct --no-wait
  restart_apiserver_pod
else
  install_forwarder_config s1-direct
fi

log "receiver (namespace audit-system)"
apply_receivers receiver
k -n audit-system rollout status deployment/audit-receiver --timeout=180s
log "cluster $CLUSTER is ready: kind/scenarios/run.sh 1|2|3|4|5|all"
