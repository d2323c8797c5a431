#!/bin/sh
# Builds add-cluster-id.wasm from add-cluster-id.js with componentize-js
# (StarlingMonkey). `npm ci` needs the npm registry (or a filled npm cache);
# the build step itself is offline.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
