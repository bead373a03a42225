#!/usr/bin/env bash
# test.sh: the whole test suite, as the README says. Installs what it needs
# first (scripts/test-deps.sh), then runs every Go test, including the
# end-to-end tests that drive a real server with openssl, curl and
# mosquitto_pub.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
bash dashboard/build-assets.sh   # front-end libraries from npm (lockfile) into the embedded assets
go vet ./...
go test -count=1 -timeout 20m "$@" ./...
