#!/usr/bin/env bash
# Runs every test. Installs what the tests need on a fresh Debian machine
# with rustup, Node and Python (CI runs exactly this, via .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "third-party Forward peers (npm @fluent-org/logger, PyPI fluent-logger)"
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

step "fluent-bit 1.8.15 from the npm fluent-bit@0.0.3 sources (cached in target/fluent-bit; ~1 min the first time)"
bash tests/interop/fluent-bit/build.sh

step "format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

step "tests"
cargo test --locked --all-targets
