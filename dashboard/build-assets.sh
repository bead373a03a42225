#!/usr/bin/env bash
# build-assets.sh: install the dashboard's front-end libraries from npm, as
# pinned by web/package-lock.json, and copy the files the pages use into
# static/vendor/ (not committed; go:embed picks them up at the next build).
# Run it with `go generate ./dashboard` or directly; needs node and npm.
set -euo pipefail
cd "$(dirname "$0")"
(cd web && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
mkdir -p static/vendor
cp web/node_modules/uplot/dist/uPlot.iife.min.js static/vendor/
cp web/node_modules/uplot/dist/uPlot.min.css static/vendor/
cp web/node_modules/uplot/LICENSE static/vendor/uPlot.LICENSE.txt
echo "dashboard assets: $(ls static/vendor | tr '\n' ' ')"
