#!/usr/bin/env bash
# Deletes the scenarios' kind cluster. The audit log directory is a host
# mount written by the apiserver as root: it is emptied from inside the node
# first, so that kind/.run/ can be removed without sudo.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=scenarios/lib.sh
source "$(dirname "$0")/scenarios/lib.sh"

need kind docker
if cluster_exists; then
  node_exec sh -c 'rm -rf /var/log/kubernetes/audit/* /var/log/kubernetes/audit/.[!.]*' || true
  kind delete cluster --name "$CLUSTER"
fi
rm -rf "$RUN_DIR/audit-log" "$RUN_DIR"/scenario-*
log "deleted $CLUSTER (certificates kept in $CERTS; remove kind/.run to start over)"
