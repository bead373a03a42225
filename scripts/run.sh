#!/usr/bin/env bash
# run.sh: build the dashboard's front-end libraries (npm, from the lockfile)
# and run `pylon serve` with the given flags. On a fresh machine this is all
# it takes: pylon serve needs no configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash dashboard/build-assets.sh >&2
exec go run ./cmd/pylon serve "$@"
