#!/usr/bin/env bash
# device.sh: a Pylon device in shell. Enrolls once (enroll.sh), then every
# EVERY seconds signs a temperature reading with `pylon seal --seq-file`
# and publishes it with mosquitto_pub over MQTT 5 with mutual TLS, printing
# the platform's refusals.
#
#   examples/shell/device.sh SERVER_URL CA_FILE DIR [ENROLLMENT_TOKEN [NAME]]
#
# Environment: PYLON (the pylon binary; default pylon), COUNT (readings;
# default 0: until interrupted), EVERY (seconds between readings; default
# 5), UNIT (default Cel), MQTT_HOST and MQTT_PORT (default: GET
# /api/v1/info).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
server=${1%/} cafile=$2 dir=$3 token=${4:-} name=${5:-shell-device}
here=$(cd "$(dirname "$0")" && pwd)
pylon=${PYLON:-pylon} count=${COUNT:-0} every=${EVERY:-5} unit=${UNIT:-Cel}

if [ ! -f "$dir/device.id" ]; then
  [ -n "$token" ] || { echo "device.sh: not enrolled: give an enrollment token" >&2; exit 2; }
  "$here/enroll.sh" "$server" "$cafile" "$token" "$dir" "$name"
fi
id=$(cat "$dir/device.id")

# The broker address: a leading ':' means the host of the server URL.
host=${MQTT_HOST:-} port=${MQTT_PORT:-}
if [ -z "$port" ]; then
  addr=$(curl --fail-with-body -sS --cacert "$dir/ca.crt" "$server/api/v1/info" | sed -n 's/.*"mqtt_addr":"\([^"]*\)".*/\1/p')
  port=${addr##*:}
  [ -n "$host" ] || host=${addr%:*}
fi
if [ -z "$host" ]; then
  host=$(printf '%s' "$server" | sed -E 's#^https://(\[[^]]*\]|[^/:]*).*#\1#')
fi

# One connection per reading, MQTT 5 at QoS 1: the PUBACK comes once the
# platform has stored the reading. A refusal comes back in the PUBACK too
# (reason code and the platform's reason, which mosquitto_pub prints as a
# warning) and on devices/ID/errors. That topic can only be read on the
# publishing connection: the client id must be the device id, and a second
# client with it (a mosquitto_sub left running) would take the session
# over. mosquitto_rr would do both on one connection, but mosquitto 2.0.11
# (Debian 12) sends an empty payload with its -f and -s options.
temp=21
i=0
while [ "$count" -eq 0 ] || [ "$i" -lt "$count" ]; do
  temp=$(awk -v t="$temp" -v r="$RANDOM" 'BEGIN { printf "%.2f", t + 0.1*(21-t) + (r/32767-0.5)*0.4 }')
  pack="[{\"n\":\"temperature\",\"u\":\"$unit\",\"v\":$temp}]"
  # seal checks the reading as the platform will, and saves the sequence
  # number (0600, synced) before it prints the message: a number is never
  # used twice, even after a crash.
  if ! printf '%s' "$pack" | "$pylon" seal --key "$dir/device.key" --seq-file "$dir/seq" > "$dir/message.cose"; then
    echo "reading not sent" >&2
  elif out=$(mosquitto_pub --cafile "$dir/ca.crt" --cert "$dir/device.crt" --key "$dir/device.key" \
      -h "$host" -p "$port" -i "$id" -q 1 -V mqttv5 -t "devices/$id/telemetry" -f "$dir/message.cose" 2>&1); then
    if [ -n "$out" ]; then
      echo "platform error (seq $(cat "$dir/seq")): $(printf '%s' "$out" | sed 's/^Warning: Publish [0-9]* failed: //' | tr '\n' ' ')"
    else
      echo "published seq $(cat "$dir/seq"): temperature $temp $unit"
    fi
  else
    echo "not delivered (seq $(cat "$dir/seq")): $out" >&2
  fi
  i=$((i + 1))
  if [ "$count" -eq 0 ] || [ "$i" -lt "$count" ]; then
    sleep "$every"
  fi
done
