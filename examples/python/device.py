#!/usr/bin/env python3
"""A Pylon device in Python, with Debian's packages only:
python3-paho-mqtt (1.6), python3-cryptography and python3-cbor2.

    device.py --server https://localhost:8443 --ca pylon-data/ca.crt \
        --token pyl_et_... --dir dev-py --count 10 --every 2

First run: makes a P-256 key and a CSR, enrolls over EST (simpleenroll,
the CA pinned) and stores device.key (0600), device.crt, ca.crt, device.id
and server.url in --dir. Then it publishes temperature readings as signed
telemetry (COSE_Sign1, ES256, SenML CBOR or JSON) at QoS 1 over MQTT 5
with mutual TLS, and prints what the platform reports on
devices/{id}/errors. Sequence numbers are reserved in blocks in --dir/seq
(saved before use), so a restart never reuses one. The protocol is in
docs/protocol.md; this file follows it step by step.
"""

import argparse
import base64
import json
import os
import random
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

SEQ_BLOCK = 100           # sequence numbers reserved per write of the seq file
MAX_RESPONSE = 1 << 20    # bytes read from an HTTP response


def write_atomic(path, data, mode=0o644):
    """Write data to path so that a crash leaves the old or the new file."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def https(ca_file):
    """An SSL context trusting only the platform CA."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def enroll(server, ca_file, token, directory, name):
    """EST simpleenroll (RFC 7030) with the enrollment token."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())  # made here; never leaves the device
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    body = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    req = urllib.request.Request(server + "/.well-known/est/simpleenroll", data=body, method="POST", headers={
        "Authorization": "Bearer " + token, "Content-Type": "application/pkcs10"})
    try:
        with urllib.request.urlopen(req, context=https(ca_file), timeout=30) as resp:
            p7 = base64.b64decode(resp.read(MAX_RESPONSE))
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read(65536))["error"]
            sys.exit(f"enrollment refused (HTTP {e.code} {err['code']}): {err['message']}")
        except (ValueError, KeyError, TypeError):
            sys.exit(f"enrollment refused: HTTP {e.code}")
    cert = pkcs7.load_der_pkcs7_certificates(p7)[0]
    device_id = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    write_atomic(os.path.join(directory, "device.key"), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    write_atomic(os.path.join(directory, "device.crt"), cert.public_bytes(serialization.Encoding.PEM))
    with open(ca_file, "rb") as f:
        write_atomic(os.path.join(directory, "ca.crt"), f.read())
    write_atomic(os.path.join(directory, "server.url"), (server + "\n").encode())
    write_atomic(os.path.join(directory, "device.id"), (device_id + "\n").encode())  # last: "enrolled"
    print("enrolled as device", device_id, flush=True)


class Sequence:
    """Sequence numbers that survive restarts and crashes: the seq file holds
    the highest number that may have been used, raised before use."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path) as f:
                self.reserved = int(f.read().strip())
        except FileNotFoundError:
            self.reserved = 0
        self.next = self.reserved + 1

    def take(self):
        if self.next > self.reserved:
            self.reserved = self.next + SEQ_BLOCK - 1
            write_atomic(self.path, f"{self.reserved}\n".encode(), 0o600)
        n, self.next = self.next, self.next + 1
        return n


def seal(key, seq, records, fmt):
    """COSE_Sign1 (RFC 9052) over a SenML pack, signed ES256, as the
    platform expects (docs/protocol.md 6.2)."""
    if fmt == "json":
        payload = json.dumps(records, separators=(",", ":")).encode()
        header = {1: -7, 3: 110, -65537: seq}   # alg ES256, content type senml+json, seq
    else:
        labels = {"bn": -2, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6}
        payload = cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in records])
        header = {1: -7, -65537: seq}           # content type absent: senml+cbor
    protected = cbor2.dumps(header)
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")   # COSE wants r || s, not DER
    return cbor2.dumps([protected, {}, payload, signature])


def broker_address(server, ca_file):
    """GET /api/v1/info: mqtt_addr, where a leading ':' means the server's host."""
    with urllib.request.urlopen(server + "/api/v1/info", context=https(ca_file), timeout=15) as resp:
        addr = json.loads(resp.read(65536))["mqtt_addr"]
    if addr.startswith(":"):
        addr = urllib.parse.urlsplit(server).hostname + addr
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default="https://localhost:8443")
    ap.add_argument("--ca", default="pylon-data/ca.crt", help="the platform CA certificate")
    ap.add_argument("--token", default=os.environ.get("PYLON_ENROLL_TOKEN", ""), help="enrollment token (first run)")
    ap.add_argument("--name", default="python-device", help="device name, for a fleet token")
    ap.add_argument("--dir", default="device-py")
    ap.add_argument("--count", type=int, default=10, help="readings to publish")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between readings")
    ap.add_argument("--format", choices=["cbor", "json"], default="cbor")
    ap.add_argument("--unit", default="Cel", help="unit of the readings (try 'furlong' to see a refusal)")
    ap.add_argument("--linger", type=float, default=1.0, help="seconds to wait for error reports at the end")
    args = ap.parse_args()
    d = args.dir
    if not os.path.exists(os.path.join(d, "device.id")):
        if not args.token:
            sys.exit("not enrolled: give --token")
        enroll(args.server.rstrip("/"), args.ca, args.token, d, args.name)
    with open(os.path.join(d, "device.id")) as f:
        device_id = f.read().strip()
    with open(os.path.join(d, "device.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    seq = Sequence(os.path.join(d, "seq"))
    host, port = broker_address(args.server.rstrip("/"), os.path.join(d, "ca.crt"))

    connected = threading.Event()

    def on_connect(client, userdata, flags, reason, properties):
        if reason.value != 0:
            print("connection refused:", reason, flush=True)
            return
        client.subscribe(f"devices/{device_id}/errors", qos=1)
        connected.set()

    def on_message(client, userdata, msg):
        print("platform error:", msg.payload.decode(errors="replace"), flush=True)

    client = mqtt.Client(client_id=device_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=os.path.join(d, "ca.crt"), certfile=os.path.join(d, "device.crt"),
                   keyfile=os.path.join(d, "device.key"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_connect, client.on_message = on_connect, on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600   # keep in-flight messages over short drops
    client.connect(host, port, keepalive=30, clean_start=False, properties=props)
    client.loop_start()
    if not connected.wait(15):
        sys.exit("could not connect to the broker")

    temp = 21.0
    for i in range(args.count):
        temp += 0.1 * (21 - temp) + random.gauss(0, 0.2)
        reading = {"n": "temperature", "u": args.unit, "v": round(temp, 2), "t": time.time()}
        n = seq.take()
        info = client.publish(f"devices/{device_id}/telemetry", seal(key, n, [reading], args.format), qos=1)
        info.wait_for_publish(30)   # PUBACK: the platform has stored it (or refused it)
        print(f"published seq {n}: temperature {reading['v']} {args.unit}", flush=True)
        if i + 1 < args.count:
            time.sleep(args.every)
    time.sleep(args.linger)   # error reports may follow the last PUBACK
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
