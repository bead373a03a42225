#!/usr/bin/env bash
# test.sh: the whole test suite, as the README says. Installs what it needs
# first (scripts/test-deps.sh), then runs every Go test, including the
# end-to-end tests that drive a real server with openssl, curl and
# mosquitto_pub, then again with -race (but sqlite).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
bash dashboard/build-assets.sh   # front-end libraries from npm (lockfile) into the embedded assets
go vet ./...
go test -count=1 -timeout 20m "$@" ./...
# Every package once more under the race detector, but sqlite, left out
# only for time (over 3 minutes with -race on two cores; run it by hand
# after changing it: go test -race ./sqlite).
go test -count=1 -timeout 20m -race "$@" $(go list ./... | grep -v '/sqlite$')
