#!/usr/bin/env bash
# Runs every test. Installs what the tests need on a fresh Debian machine
# with rustup, Node and Python (CI runs exactly this, via .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# A one-off build: incremental caches would only take disk space.
export CARGO_INCREMENTAL=0
step "disk space (the build needs ~6 GB in target/)"
df -h . "${TMPDIR:-/tmp}" || true

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-wasip2

step "WebAssembly filters: examples and test guests (example-filters/, target wasm32-wasip2)"
cargo build --release --locked --target wasm32-wasip2 --manifest-path example-filters/Cargo.toml
python3 -m pip install --quiet --disable-pip-version-check -r example-filters/python/requirements.txt
bash example-filters/python/add-cluster-id/build.sh
bash example-filters/js/add-cluster-id/build.sh

step "HTTP CONNECT proxies, tools, the Go lumberjack library, rsyslog and podman from Debian (tinyproxy, squid, socat, stunnel4, curl, openssl, iproute2, iptables, golang-go, golang-gopkg-natefinch-lumberjack.v2-dev, rsyslog, rsyslog-relp, rsyslog-gnutls, podman, runc)"
need=()
for pair in tinyproxy:tinyproxy squid:squid socat:socat stunnel4:stunnel curl:curl openssl:openssl iproute2:ip iproute2:tc iptables:iptables golang-go:go podman:podman runc:runc; do
  command -v "${pair#*:}" >/dev/null 2>&1 || need+=("${pair%%:*}")
done
# kube-apiserver's log writer, built by tests/lumberjack.rs in GOPATH mode.
[ -d /usr/share/gocode/src/gopkg.in/natefinch/lumberjack.v2 ] || need+=(golang-gopkg-natefinch-lumberjack.v2-dev)
# The syslog output's peer (tests/syslog.rs): rsyslog with RELP and TLS.
for p in rsyslog rsyslog-relp rsyslog-gnutls; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

step "third-party Forward peers (npm @fluent-org/logger, PyPI fluent-logger)"
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

step "the S3 output's peer: moto 5.2.5 in server mode and boto3 (PyPI, tests/s3/requirements.txt)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/s3/requirements.txt

step "fluent-bit 1.8.15 from the npm fluent-bit@0.0.3 sources (cached in target/fluent-bit; ~1 min the first time)"
bash tests/interop/fluent-bit/build.sh

step "format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

step "tests"
cargo test --locked --all-targets

# The steps below need root (network namespaces, tc, tmpfs); they fail, and
# say why, where that is not available.
as_root=""; [ "$(id -u)" -eq 0 ] || as_root="sudo -E"

step "kind/: manifests validated offline (kubernetes-validate, yamllint, shellcheck, audit-forwarder check)"
bash kind/validate.sh

step "kind/netns: the five deployment scenarios on network namespaces"
$as_root env AF_BIN="$PWD/target/debug/audit-forwarder" bash kind/netns/run.sh

step "fault injection, short form (scripts/faults/run.sh --short)"
$as_root env AF_BIN="$PWD/target/debug/audit-forwarder" bash scripts/faults/run.sh --short

step "container image: release build, podman build (fast mode) and its smoke test (scripts/image.sh fast)"
cargo build --release --locked
bash scripts/image.sh fast

step "disk space at the end"
du -sh target 2>/dev/null || true
df -h . "${TMPDIR:-/tmp}" || true
