package device_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

// tls13RecordOverhead is what TLS 1.3 adds to each record with the AEADs
// Go negotiates (AES-GCM, ChaCha20-Poly1305): a 5-byte header, the 1-byte
// inner content type and a 16-byte tag (RFC 8446 §5.2), no padding.
const tls13RecordOverhead = 5 + 1 + 16

// footprintOptions are options for measuring: no heartbeats, no
// reconnection surprises.
func footprintOptions(addr string) device.Options {
	return device.Options{MQTTAddr: addr, Heartbeat: -1, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}
}

// publishOnce connects with opts, publishes recs as one message, waits for
// the PUBACK and returns the MQTT payload size the broker saw.
func publishOnce(t *testing.T, dir string, b *fakeBroker, opts device.Options, recs []senml.Record) int {
	t.Helper()
	before, _ := b.telemetry()
	c, err := device.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Publish(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	after, bad := b.telemetry()
	if len(after) != len(before)+1 || bad != 0 {
		t.Fatalf("broker got %d new messages (%d bad signatures), want 1 good", len(after)-len(before), bad)
	}
	return after[len(after)-1]
}

// fiftyReadings returns 50 temperature readings in 1/16 °C steps, 1 s
// apart: each value fits a CBOR half float.
func fiftyReadings() []senml.Record {
	recs := make([]senml.Record, 50)
	for i := range recs {
		recs[i] = senml.Record{Name: "temperature", Unit: "Cel", Value: device.Float(20 + float64(i)/16), Time: float64(i - 50)}
	}
	return recs
}

// publishPacketLen is the size of the MQTT 5 PUBLISH packet the SDK sends
// at QoS 1 without properties: fixed header (type, remaining length),
// topic, packet identifier, properties length 0, payload [MQTT-3.3].
func publishPacketLen(topic string, payload int) int {
	rem := 2 + len(topic) + 2 + 1 + payload
	n := 1
	for v := rem; v >= 128; v >>= 7 {
		n++
	}
	return 1 + n + rem
}

// pubackPacketLen is the size of the fake broker's success PUBACK.
func pubackPacketLen() int {
	cp := packets.NewControlPacket(packets.PUBACK)
	cp.Content.(*packets.Puback).PacketID = 1
	var buf bytes.Buffer
	cp.WriteTo(&buf)
	return buf.Len()
}

// TestWireFootprint measures what a reading costs on the wire: the MQTT
// payload (signed message) for one reading and for a 50-reading batch,
// plain and compressed; and the TCP bytes of each of 1,000 messages under
// TLS, which must be exactly one TLS record for the PUBLISH and one for
// the PUBACK. docs/benchmarks.md ("Device SDK footprint") reports the
// numbers.
func TestWireFootprint(t *testing.T) {
	dir, b := fakeDevice(t, true)
	one := []senml.Record{{Name: "temperature", Unit: "Cel", Value: device.Float(22.5)}}
	opts := footprintOptions(b.Addr())

	single := publishOnce(t, dir, b, opts, one)
	short := publishOnce(t, dir, b, opts, []senml.Record{{Name: "temp", Unit: "Cel", Value: device.Float(22.5)}})
	opts.ContentType = envelope.ContentTypeSenMLJSON
	singleJSON := publishOnce(t, dir, b, opts, one)
	opts.ContentType = 0
	batch := publishOnce(t, dir, b, opts, fiftyReadings())
	opts.Compression = envelope.EncodingDeflate
	deflate := publishOnce(t, dir, b, opts, fiftyReadings())
	sensorDeflate := publishOnce(t, dir, b, opts, sensorReadings(50))
	opts.Compression = envelope.EncodingZstd
	zstd := publishOnce(t, dir, b, opts, fiftyReadings())
	t.Logf("MQTT payload: 1 reading %d B (name \"temp\" %d B, JSON %d B); 50 readings %d B, deflate %d B, zstd %d B; 50 sensor readings deflate %d B",
		single, short, singleJSON, batch, deflate, zstd, sensorDeflate)
	// The protocol's 100-byte vector (name "temp", no time, seq 123456 in
	// 5 B) plus the absolute time the SDK gives every reading (10 B) and a
	// payload length of 2 B, less 2 B for this seq (1001, the second
	// Connect's first block: 3 B): 109 B, one less if the time falls on a
	// whole second.
	if short > 110 || single > short+len("erature") {
		t.Errorf("single-reading payloads: got %d B (name \"temp\" %d B), want at most 117 (110) B", single, short)
	}
	// Issue 4's target for a compressed 50-reading pack.
	if batch > 1100 || deflate >= batch || deflate > 12*50 {
		t.Errorf("50-reading payloads: got %d B, deflate %d B; want deflate < plain and at most 12 B per reading", batch, deflate)
	}

	// TCP bytes of each message over one connection.
	var w wireCounter
	opts = footprintOptions(b.Addr())
	opts.DialContext = w.dial
	c, err := device.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Publish(ctx, one...); err != nil { // connection set up
		t.Fatal(err)
	}
	setupOut, setupIn := w.written.Load(), w.read.Load()
	topic := "devices/" + c.DeviceID() + "/telemetry"
	pubackRecord := int64(pubackPacketLen() + tls13RecordOverhead)
	const n = 1000
	var exactOut, exactIn int
	for range n {
		out0, in0 := w.written.Load(), w.read.Load()
		// Publish returns after the PUBACK was read from the connection.
		if err := c.Publish(ctx, one...); err != nil {
			t.Fatal(err)
		}
		out, in := w.written.Load()-out0, w.read.Load()-in0
		p, _ := b.telemetry()
		if out == int64(publishPacketLen(topic, p[len(p)-1])+tls13RecordOverhead) {
			exactOut++
		}
		if in == pubackRecord {
			exactIn++
		}
	}
	out := float64(w.written.Load()-setupOut) / n
	in := float64(w.read.Load()-setupIn) / n
	t.Logf("TCP per message: %.1f B sent (payload %d-%d B + MQTT PUBLISH header %d B + TLS record %d B), %.1f B received (PUBACK %d B + TLS record %d B); connection set-up with the first message %d B sent, %d B received",
		out, single, single+2, publishPacketLen(topic, single)-single, tls13RecordOverhead, in, pubackPacketLen(), tls13RecordOverhead, setupOut, setupIn)
	// One TLS record per packet and nothing else on the wire; the
	// SUBSCRIBE to the errors topic, sent concurrently with the first
	// message, may fall into one message's count.
	if exactOut < n-1 || exactIn < n-1 {
		t.Errorf("messages of exactly one PUBLISH record sent and one PUBACK record received: got %d and %d of %d, want at least %d", exactOut, exactIn, n, n-1)
	}
}

// TestQueueHeapFootprint checks that an offline client keeps queued
// messages on disk: each one adds an index entry to the heap, not its
// bytes. BenchmarkClientMemory measures the full default outbox.
func TestQueueHeapFootprint(t *testing.T) {
	dir, _ := fakeDevice(t, false)
	opts := footprintOptions(closedAddr(t))
	opts.NoWait = true
	c, err := device.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recs := fiftyReadings()
	h0 := heapAlloc()
	const n = 300
	for range n {
		if err := c.Publish(context.Background(), recs...); err != nil {
			t.Fatal(err)
		}
	}
	grown := float64(heapAlloc()) - float64(h0)
	s := c.Stats()
	if s.Queued != n {
		t.Fatalf("got %d messages queued, want %d", s.Queued, n)
	}
	perMsg, msgBytes := grown/n, float64(s.QueuedBytes)/n
	t.Logf("heap per queued message: %.0f B (message on disk: %.0f B)", perMsg, msgBytes)
	if perMsg > msgBytes/2 {
		t.Errorf("heap per queued message: got %.0f B, want under half the %.0f B each takes on disk", perMsg, msgBytes)
	}
}
