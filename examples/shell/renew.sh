#!/usr/bin/env bash
# renew.sh: renew (and rekey) a device certificate with EST simplereenroll,
# authenticated by the current certificate over mutual TLS.
#
#   examples/shell/renew.sh SERVER_URL DIR
#
# DIR is the folder enroll.sh filled. A new key is made; the old key and
# certificate are replaced only once the new certificate has arrived.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
server=$1 dir=$2
umask 077
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/device.key.new"
openssl req -new -key "$dir/device.key.new" -subj "/CN=$(cat "$dir/device.id")" -outform DER | base64 > "$dir/renew.csr.b64"
curl --fail-with-body -sS --cacert "$dir/ca.crt" --cert "$dir/device.crt" --key "$dir/device.key" \
  -H "Content-Type: application/pkcs10" --data-binary @"$dir/renew.csr.b64" \
  "$server/.well-known/est/simplereenroll" \
  | base64 -d | openssl pkcs7 -inform DER -print_certs | openssl x509 -out "$dir/device.crt.new"
mv "$dir/device.key.new" "$dir/device.key"
mv "$dir/device.crt.new" "$dir/device.crt"
rm -f "$dir/renew.csr.b64"
echo "renewed: serial $(openssl x509 -in "$dir/device.crt" -noout -serial | cut -d= -f2), valid until $(openssl x509 -in "$dir/device.crt" -noout -enddate | cut -d= -f2)"
