#!/usr/bin/env bash
# enroll.sh: enroll a device with Pylon using only openssl and curl (EST, RFC 7030).
#
#   examples/shell/enroll.sh SERVER_URL CA_FILE ENROLLMENT_TOKEN DIR [COMMON_NAME]
#
# The private key is made here and never leaves DIR. Afterwards DIR holds
# device.key (0600), device.crt, ca.crt and device.id.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
server=$1 cafile=$2 token=$3 dir=$4 cn=${5:-device}
mkdir -p "$dir"
umask 077

# 1. The device makes its own key pair (ECDSA P-256) and a CSR. The server
#    sets every identity field itself; the CN matters only for fleet tokens,
#    where it becomes the new device's name (e.g. a serial number).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/device.key"
openssl req -new -key "$dir/device.key" -subj "/CN=$cn" -outform DER | base64 > "$dir/device.csr.b64"

# 2. simpleenroll, authenticated by the enrollment token. The answer is a
#    base64 PKCS#7 "certs-only" holding the device certificate.
curl --fail-with-body -sS --cacert "$cafile" \
  -H "Authorization: Bearer $token" -H "Content-Type: application/pkcs10" \
  --data-binary @"$dir/device.csr.b64" \
  "$server/.well-known/est/simpleenroll" > "$dir/device.p7.b64"
base64 -d "$dir/device.p7.b64" | openssl pkcs7 -inform DER -print_certs | openssl x509 -out "$dir/device.crt"

# 3. The CA certificates, over EST too (pinned by the CA file we already trust).
curl --fail-with-body -sS --cacert "$cafile" "$server/.well-known/est/cacerts" \
  | base64 -d | openssl pkcs7 -inform DER -print_certs | openssl x509 -out "$dir/ca.crt"

# 4. The device id is the certificate's common name.
openssl x509 -in "$dir/device.crt" -noout -subject -nameopt multiline \
  | sed -n 's/^ *commonName *= *//p' > "$dir/device.id"
rm -f "$dir/device.csr.b64" "$dir/device.p7.b64"
echo "enrolled device $(cat "$dir/device.id"); certificate valid until $(openssl x509 -in "$dir/device.crt" -noout -enddate | cut -d= -f2)"
