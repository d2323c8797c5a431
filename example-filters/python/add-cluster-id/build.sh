#!/usr/bin/env bash
# Builds add-cluster-id.wasm from app.py with componentize-py (PyPI), offline
# once it is installed: pip install -r example-filters/python/requirements.txt
set -euo pipefail
cd "$(dirname "$0")"
componentize-py -d ../../../filters-wit -w audit-filter componentize app -o add-cluster-id.wasm
