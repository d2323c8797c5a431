#!/usr/bin/env bash
# Longer fuzzing than CI's: FUZZ_CASES cases per target (default 500,000),
# release build. Usage: scripts/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_RANDOM=1 FUZZ_CASES="${1:-500000}" exec cargo test --release --locked --test fuzz -- --nocapture
