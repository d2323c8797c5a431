#!/usr/bin/env bash
# Builds the container image with podman and smoke-tests it the way the
# manifests in kind/ run it (non-root, read-only root, no network but what
# the test gives it, state on a volume).
#
#   scripts/image.sh fast   # the release binary and filters built on this host,
#                           # in the runtime base (Dockerfile --target prebuilt); CI
#   scripts/image.sh full   # the whole Dockerfile, from source (~9 min on 2 idle cores)
#
# No container registry is needed: the bases are made locally when missing,
# the runtime base from Debian packages (libc6 libgcc-s1 netbase tzdata
# base-files, a passwd entry for 65532, like distroless/cc "nonroot"), the
# builder from debootstrap plus this host's Rust toolchain. Needs root (or
# sudo), podman and runc (Debian: apt-get install podman runc).
#
# Environment: IMAGE (default localhost/audit-forwarder:dev), EVENTS (per
# phase of the forward/receive test, default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
mode="${1:-fast}"
IMAGE="${IMAGE:-localhost/audit-forwarder:dev}"
EVENTS="${EVENTS:-2000}"
RUNTIME_BASE=localhost/audit-forwarder-runtime-base:bookworm-ca
BUILDER_BASE=localhost/audit-forwarder-builder-base:bookworm
work="$ROOT/target/image"
mkdir -p "$work"

step() { printf '\n== image: %s\n' "$*"; }
die() { echo "image: $*" >&2; exit 1; }
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

# podman as these machines need it: runc (crun fails on their cgroup
# layout), ulimits the kernel allows (nproc at most 32768).
hard_nofile=$(ulimit -Hn)
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
cat > "$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"
podman() { $sudo env CONTAINERS_CONF="$CONTAINERS_CONF" podman "$@"; }

runtime_base() {
  podman image exists "$RUNTIME_BASE" && return
  step "making the runtime base $RUNTIME_BASE from Debian packages"
  local d="$work/runtime-base"
  $sudo rm -rf "$d"; mkdir -p "$d/debs" "$d/root"
  local pkgs=(libc6 libgcc-s1 netbase tzdata base-files ca-certificates)
  (cd "$d/debs" && { apt-get download "${pkgs[@]}" 2>/dev/null \
    || { $sudo apt-get update -qq && apt-get download "${pkgs[@]}"; }; })
  for deb in "$d"/debs/*.deb; do dpkg-deb -x "$deb" "$d/root"; done
  # The CA bundle update-ca-certificates would make (distroless/cc has
  # it): the S3 output verifies public stores against it.
  mkdir -p "$d/root/etc/ssl/certs"
  cat "$d"/root/usr/share/ca-certificates/mozilla/*.crt > "$d/root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$d/root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$d/root/etc/group"
  install -d -m 1777 "$d/root/tmp"
  install -d -m 0700 "$d/root/home/nonroot"
  rm -rf "$d/root/usr/share/doc" "$d/root/usr/share/man" "$d/root/usr/share/lintian"
  $sudo chown -R 0:0 "$d/root"
  $sudo chown 65532:65532 "$d/root/home/nonroot"
  $sudo tar -C "$d/root" -c . | podman import --change 'USER 65532:65532' - "$RUNTIME_BASE" >/dev/null
}

builder_base() {
  podman image exists "$BUILDER_BASE" && return
  step "making the builder base $BUILDER_BASE (debootstrap bookworm + this host's Rust toolchain)"
  command -v debootstrap >/dev/null || { $sudo apt-get update -qq; $sudo apt-get install -y -qq debootstrap >/dev/null; }
  local d="$work/builder-base"
  if [ ! -f "$d.done" ]; then
    $sudo rm -rf "$d"
    $sudo debootstrap --variant=minbase --include=build-essential,ca-certificates bookworm "$d" http://deb.debian.org/debian >/dev/null
    touch "$d.done"
  fi
  local home; home=$(rustup show home)
  local tc; tc=$(rustup show active-toolchain | cut -d' ' -f1)
  $sudo mkdir -p "$d/usr/local/rustup/toolchains" "$d/usr/local/cargo/bin"
  $sudo rm -rf "$d/usr/local/rustup/toolchains/$tc"
  $sudo cp -a "$home/toolchains/$tc" "$d/usr/local/rustup/toolchains/"
  $sudo cp -L "$(command -v rustup)" "$d/usr/local/cargo/bin/rustup"
  for t in cargo rustc rustdoc; do $sudo ln -sf rustup "$d/usr/local/cargo/bin/$t"; done
  $sudo tar -C "$d" -c . | podman import \
    --change "ENV RUSTUP_HOME=/usr/local/rustup" --change "ENV CARGO_HOME=/usr/local/cargo" \
    --change "ENV RUSTUP_TOOLCHAIN=$tc" \
    --change "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    - "$BUILDER_BASE" >/dev/null
}

build_fast() {
  local bin=target/release/audit-forwarder wasm=example-filters/target/wasm32-wasip2/release
  [ -x "$bin" ] || die "$bin is missing: cargo build --release --locked"
  [ -f "$wasm/add_cluster_id.wasm" ] || die "$wasm is missing: cargo build --release --locked --target wasm32-wasip2 --manifest-path example-filters/Cargo.toml"
  step "fast build: $bin and the filters into $RUNTIME_BASE (Dockerfile --target prebuilt)"
  local ctx="$work/ctx"
  $sudo rm -rf "$ctx"; mkdir -p "$ctx/bin" "$ctx/filters" "$ctx/presets" "$ctx/varlib/audit-forwarder"
  strip --strip-debug -o "$ctx/bin/audit-forwarder" "$bin"
  for f in add_cluster_id drop_read_only redact; do
    install -m 0644 "$wasm/$f.wasm" "$ctx/filters/$(echo "$f" | tr _ -).wasm"
  done
  install -m 0644 presets/*.yaml "$ctx/presets/"
  chmod 0700 "$ctx/varlib/audit-forwarder"
  $sudo chown 65532:65532 "$ctx/varlib/audit-forwarder"
  podman build -q --network none --target prebuilt --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
    -f Dockerfile -t "$IMAGE" "$ctx" >/dev/null
}

build_full() {
  builder_base
  step "full build of the Dockerfile (cargo in the builder; network for crates.io)"
  local ca=/etc/ssl/certs/ca-certificates.crt
  podman build --network host -v "$ca:$ca:ro" \
    --build-arg RUST_IMAGE="$BUILDER_BASE" --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
    -f Dockerfile -t "$IMAGE" .
}

runtime_base
case "$mode" in
  fast) build_fast ;;
  full) build_full ;;
  *) die "usage: scripts/image.sh fast|full" ;;
esac

# ---------------------------------------------------------------- smoke test
step "smoke test of $IMAGE"
t="$work/smoke"
$sudo rm -rf "$t"; mkdir -p "$t"
cleanup() {
  local c
  for c in af-smoke-fwd af-smoke-rcv; do podman rm --force --ignore --time 0 "$c" >/dev/null 2>&1 || true; done
  podman volume rm --force af-smoke-state >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
# How the manifests run it (kind/manifests, the sidecar example): no root,
# read-only root file system, no capabilities, no new privileges.
hardened=(--read-only --user 65532:65532 --cap-drop ALL --security-opt no-new-privileges)

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
echo "image $IMAGE: $((size / 1000 / 1000)) MB ($size bytes), user $user"
[ "$user" = "65532:65532" ] || die "the image runs as '$user', not 65532:65532"
podman run --rm "${hardened[@]}" --network none "$IMAGE" --version
cid=$(podman create "$IMAGE")
bundle=$(podman export "$cid" | tar -tvf - | awk '$6 ~ /etc\/ssl\/certs\/ca-certificates\.crt$/ {print $3}')
podman rm "$cid" >/dev/null
echo "CA bundle: ${bundle:-none} bytes"
[ "${bundle:-0}" -gt 100000 ] || die "no CA bundle in the image (the S3 output verifies public stores against it)"

step "demo inside the image (no network, writable /tmp only): every output gets its share"
podman run --rm "${hardened[@]}" --network none --tmpfs /tmp:rw,size=64m "$IMAGE" --log-level warn demo --events 300 \
  > "$t/demo.out" 2>&1 || { cat "$t/demo.out"; die "demo failed"; }
tail -n 5 "$t/demo.out"

step "the state volume: created by the image for 65532, mode 0700"
podman volume create af-smoke-state >/dev/null
mode_owner=$(podman run --rm "${hardened[@]}" --network none -v af-smoke-state:/var/lib/audit-forwarder \
  --entrypoint /usr/local/bin/audit-forwarder "$IMAGE" --version >/dev/null && \
  $sudo stat -c '%a %u' "$(podman volume inspect --format '{{.Mountpoint}}' af-smoke-state)")
echo "state volume: mode/uid $mode_owner"
[ "$mode_owner" = "700 65532" ] || die "state volume is '$mode_owner', want '700 65532'"

step "check on every shipped configuration, with stand-in certificates at the paths they name"
bash kind/gen-certs.sh --out "$t/certs" >/dev/null
mkdir -p "$t/etc-af/tls" "$t/etc-af/policies" "$t/etc-webhook" "$t/configs"
for n in ca.crt client.crt client.key proxy-ca.crt proxy-client.crt proxy-client.key; do cp "$t/certs/$n" "$t/etc-af/tls/$n"; done
cp "$t/certs/receiver.crt" "$t/etc-af/tls/tls.crt"; cp "$t/certs/receiver.key" "$t/etc-af/tls/tls.key"
cp "$t/certs/ca.crt" "$t/etc-webhook/ca.crt"
cp "$t/certs/receiver.crt" "$t/etc-webhook/tls.crt"; cp "$t/certs/receiver.key" "$t/etc-webhook/tls.key"
cp kind/config/policies/*.yaml "$t/etc-af/policies/"
key=$(cat "$t/certs/shared-key")
chmod -R a+rX "$t"
mapfile -t tomls < <(find kind -path kind/netns -prune -o -path kind/.run -prune -o -name '*.toml' -print | sort)
for f in "${tomls[@]}"; do
  c="$t/configs/$(echo "$f" | tr / _)"
  sed "s/@SHARED_KEY@/$key/g" "$f" > "$c"; chmod a+r "$c"
  if out=$(podman run --rm "${hardened[@]}" --network none \
      -v "$t/etc-af:/etc/audit-forwarder:ro" -v "$t/etc-webhook:/etc/audit-webhook:ro" \
      -v "$c:/config.toml:ro" "$IMAGE" check --config /config.toml 2>&1); then
    echo "  ok  $f: $(echo "$out" | tail -n 1)"
  else
    echo "$out" | sed 's/^/      /'; die "check $f failed in the image"
  fi
done

step "forward → receive between two containers on a loopback-only network, $EVENTS events, a restart, $EVENTS more"
mkdir -p "$t/log" "$t/out" "$t/state"
$sudo chown 65532:65532 "$t/out" "$t/state"
# The receiver has no network but its own loopback; the forwarder joins its
# network namespace (as a sidecar shares its pod's).
podman run -d --name af-smoke-rcv "${hardened[@]}" --network none -v "$t/out:/out" "$IMAGE" \
  receive --set receive.listen='"127.0.0.1:24224"' --set receive.output='"/out/events.jsonl"' >/dev/null
# Appends audit events smoke-<start>…smoke-<start+n-1> to the log.
write_events() {
  python3 - "$t/log/audit.log" "$2" "$1" <<'PY'
import json, sys
path, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "a") as f:
    for i in range(start, start + n):
        f.write(json.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": "smoke-%06d" % i, "stage": "ResponseComplete", "verb": "get",
            "requestURI": "/api/v1/namespaces/default/pods", "user": {"username": "smoke"},
            "stageTimestamp": "2026-01-01T00:00:00.000000Z"}) + "\n")
PY
}
write_events 0 "$EVENTS"
chmod -R a+rX "$t/log"
fwd() {
  podman run -d --name af-smoke-fwd "${hardened[@]}" --network container:af-smoke-rcv \
    -v "$t/log:/var/log/kubernetes/audit:ro" -v "$t/state:/var/lib/audit-forwarder" "$IMAGE" \
    forward --path /var/log/kubernetes/audit/audit.log --host 127.0.0.1 --port 24224 \
    --set tail.poll_interval='"50ms"' >/dev/null
}
wait_lines() {
  local want=$1 have=0
  for _ in $(seq 1 600); do
    have=$( (cat "$t/out/events.jsonl" 2>/dev/null || true) | wc -l)
    [ "$have" -ge "$want" ] && return 0
    sleep 0.1
  done
  podman logs af-smoke-fwd 2>&1 | tail -n 20; podman logs af-smoke-rcv 2>&1 | tail -n 20
  die "the receiver wrote $have of $want lines"
}
fwd
wait_lines "$EVENTS"
podman stop -t 10 af-smoke-fwd >/dev/null   # SIGTERM: acks drained, checkpoint written
podman rm af-smoke-fwd >/dev/null
write_events "$EVENTS" "$EVENTS"
fwd
wait_lines $((2 * EVENTS))
python3 - "$t/out/events.jsonl" $((2 * EVENTS)) <<'PY'
import json, sys
ids = [json.loads(l)["auditID"] for l in open(sys.argv[1])]
want = ["smoke-%06d" % i for i in range(int(sys.argv[2]))]
assert ids == want, "missing %d, duplicates %d" % (len(set(want) - set(ids)), len(ids) - len(set(ids)))
print("receiver wrote %d events, in order, none missing, none twice" % len(ids))
PY
state_mode=$($sudo stat -c '%a' "$t/state")
cp_mode=$($sudo find "$t/state" -maxdepth 1 -type f -name '*.json' -printf '%m\n' | sort -u | tr '\n' ' ')
out_mode=$($sudo stat -c '%a' "$t/out/events.jsonl")
echo "modes: state dir $state_mode, checkpoints ${cp_mode:-none}, receiver output $out_mode"
[ "$out_mode" = 600 ] || die "the receiver's output is $out_mode, want 600"
# The host directory was made 0755 (like a new hostPath): narrowed at start.
[ "$state_mode" = 700 ] || die "the state directory is $state_mode, want 700"
step "image smoke test passed ($mode): $IMAGE, $((size / 1000 / 1000)) MB, user $user"
