// Package device is Pylon's device SDK: enrollment, signed telemetry over
// MQTT 5 (Eclipse Paho), store-and-forward, heartbeats and certificate
// renewal, for devices that lose their network and must do little work.
//
//	id, err := device.Enroll(ctx, "https://pylon.example:8443", token, caPEM, "/var/lib/sensor")
//	c, err := device.Connect(ctx, "/var/lib/sensor", device.Options{Firmware: "1.4.2"})
//	defer c.Close()
//	err = c.Publish(ctx, senml.Record{Name: "temperature", Unit: "Cel", Value: device.Float(21.5)})
//
// It imports only the root package, Paho, the standard library and the
// codec packages envelope, senml and est (deps_test.go checks this).
//
// # The device directory
//
// Enroll generates the key on the device and stores, in a 0700 directory,
// each file written atomically (temporary file, fsync, rename, directory
// fsync):
//
//	device.key   PKCS#8 PEM, 0600 — never leaves the device
//	device.crt   the device certificate
//	ca.crt       the platform CA: the only root trusted, for HTTPS and MQTT
//	server.url   the HTTPS URL enrolled with (renewal, GET /api/v1/info)
//	device.id    the device id, written last: its presence means "enrolled"
//
// The Client adds:
//
//	seq          the reserved sequence-number high-water mark
//	outbox/      sealed messages awaiting their PUBACK, one file per seq
//	outbox/rejected/  messages the platform refused (the newest 1,000)
//	keys/        public keys of previous certificates (re-sealing, below)
//	mqtt.addr    the broker address the server announced last
//
// # Delivery: exactly once, nothing lost
//
// Publish resolves the SenML records (base fields applied; records without
// a time get the time of the call, so queued readings keep theirs), checks
// them as the platform would, takes the next sequence number, seals the
// pack (envelope.Seal: COSE_Sign1 with the device key) and writes it to
// outbox/<seq>.msg — file fsync, then a directory fsync shared by
// concurrent writers — before anything is sent. A dispatcher sends queued
// messages in sequence order at QoS 1, at most Options.MaxInflight at a
// time. A message leaves the outbox only when the platform answered it:
// PUBACK 0x00 (stored, now or before) deletes it; a refusal (0x87, 0x97,
// 0x99) moves it to outbox/rejected/ and reports it through
// Options.OnError; anything else (no answer, a dropped connection, the
// broker's DISCONNECT 0x88 when its store failed) leaves it queued, and it
// is sent again. After every (re)connection the whole outbox is resent in
// sequence order, except what Paho's own session is resending (MQTT 5,
// Clean Start 0 with a session expiry, so short drops keep in-flight
// messages). Resending is safe because the platform stores each (device,
// seq) once and acknowledges duplicates: that makes delivery exactly-once.
//
// The outbox is bounded (Options.MaxQueued, MaxQueueBytes). When it is
// full, Publish returns ErrQueueFull and queues nothing: the SDK never
// drops accepted data to make room; the caller decides what to give up.
//
// Sequence numbers are reserved in blocks of 1,000: the file seq holds the
// highest number that may have been used, raised (and synced) before a
// number above it is handed out. A crash skips at most a block and never
// reuses a number; a restart continues above the mark (and above every
// seq still in the outbox). A seq file that cannot be parsed stops Connect
// rather than restarting at 1.
//
// # Renewal
//
// At Options.RenewAt (2/3 by default) of the certificate's lifetime,
// checked every minute and after each reconnection, the Client makes a new
// key, renews over EST simplereenroll with mutual TLS, stores the old
// public key under keys/, writes the new key and certificate next to the
// old ones and renames them into place (LoadIdentity completes an
// interrupted rename), and reconnects. A message queued under the old key
// would be refused by the platform (signed with another key), so each
// outbox file records the fingerprint of its key, and a message sealed
// with an older key is opened with the kept public key and sealed again,
// same seq and content, before it is sent. The reconnection after a key
// change asks for a clean MQTT session, so that no copy signed with the
// old key is resent from Paho's session.
//
// # Heartbeats
//
// Every Options.Heartbeat (60 s by default) the Client queues a message
// under the base name "sys/": uptime (s, since the process started),
// firmware (vs, Options.Firmware), battery ("%EL", the SenML unit for
// remaining battery in percent), rssi ("dB": the value is in dBm, which
// SenML does not register; "dBW" would be wrong by 30) and mem_free (B),
// the last three from Options.Health.
//
// # Concurrency
//
// A Client is safe for concurrent use and holds no global state. Its
// goroutines (dispatcher, one per PUBLISH in flight, renewal, heartbeat,
// and Paho's) end with Close or with the context given to Connect. Lock
// order: Client.mu, then the identity lock, the outbox's and the
// sequence store's locks; none calls back into the Client.
package device
