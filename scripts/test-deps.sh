#!/usr/bin/env bash
# test-deps.sh: install and start what the test suite needs on a fresh
# Debian machine: openssl, curl, the mosquitto clients and broker (for
# interop tests), Chromium (browser tests), npm, Debian's python3 with
# paho-mqtt, cryptography and cbor2 (the Python example device), and PostgreSQL/Mosquitto services if they are installed
# but stopped. Safe to run again; needs root for apt-get.
set -euo pipefail

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v chromium >/dev/null || need+=(chromium)   # dashboard browser tests
command -v npm >/dev/null || need+=(npm)             # dashboard front-end libraries
# The Python example device runs on Debian's own python3 and libraries.
for mod in paho:python3-paho-mqtt cryptography:python3-cryptography cbor2:python3-cbor2; do
  /usr/bin/python3 -c "import ${mod%%:*}" 2>/dev/null || need+=("${mod#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test-deps: please install: ${need[*]}" >&2
    exit 1
  fi
fi

# The platform's own tests start their own brokers on free ports; the
# machine's services are (re)started for the interop and PostgreSQL tests.
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>/dev/null || true
fi
if command -v mosquitto >/dev/null && ! pgrep -x mosquitto >/dev/null && [ -f /etc/mosquitto/mosquitto.conf ]; then
  mosquitto -d -c /etc/mosquitto/mosquitto.conf || true
fi
