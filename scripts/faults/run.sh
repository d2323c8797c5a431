#!/usr/bin/env bash
# Fault-injection suite of audit-forwarder (issue #10); see scripts/faults/README.md.
#
#   scripts/faults/run.sh [--short] [--seed N] [--keep] [SCENARIO...]
#
#   SCENARIO: 1 kill-forwarder, 2 kill-receiver, 3 proxy, 4 network,
#             5 rotation-storm, 6 state-full, 7 slow-receiver (default: all)
#   AF_BIN    the audit-forwarder binary (default: target/release/audit-forwarder
#             if present, else target/debug/audit-forwarder; relative to the repo)
#
# Needs root (ip netns, tc, mount -t tmpfs), python3, tinyproxy.
# Exit status: 0 all selected scenarios passed, 1 one failed, 2 usage/environment.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ -z ${AF_BIN:-} ]]; then
  if [[ -x $REPO/target/release/audit-forwarder ]]; then AF_BIN=$REPO/target/release/audit-forwarder
  else AF_BIN=$REPO/target/debug/audit-forwarder; fi
elif [[ $AF_BIN != /* ]]; then
  if [[ -x $AF_BIN && $AF_BIN == */* ]]; then AF_BIN=$(cd "$(dirname "$AF_BIN")" && pwd)/$(basename "$AF_BIN")
  else AF_BIN=$REPO/$AF_BIN; fi
fi
export AF_BIN

for a in "$@"; do
  case $a in -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exec python3 "$HERE/faults.py" --help ;; esac
done

# Everything the driver starts or creates is listed here; the trap undoes
# whatever is left (the driver cleans up itself; this is the backup for a
# driver killed hard).
REGISTRY=$(mktemp /tmp/af-faults-registry.XXXXXX)
export AF_FAULTS_REGISTRY=$REGISTRY
child=
cleanup() {
  if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null
    # bounded: the driver's own cleanup kills with SIGKILL and waits <= 10 s per process
    for _ in $(seq 1 150); do kill -0 "$child" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$child" 2>/dev/null
  fi
  python3 "$HERE/faults.py" --cleanup "$REGISTRY"
  rm -f "$REGISTRY"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 "$HERE/faults.py" "$@" &
child=$!
wait "$child"
rc=$?
child=
exit $rc
