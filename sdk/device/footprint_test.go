package device_test

import (
	"context"
	"testing"
	"time"

	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

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

func fiftyReadings() []senml.Record {
	recs := make([]senml.Record, 50)
	for i := range recs {
		recs[i] = senml.Record{Name: "temperature", Unit: "Cel", Value: device.Float(20 + float64(i)/16), Time: float64(i - 50)}
	}
	return recs
}

// TestWireFootprint measures what a reading costs on the wire: the MQTT
// payload (signed message) for one reading and for a 50-reading batch,
// plain and compressed, and the TCP bytes per message (TLS records, MQTT
// PUBLISH and PUBACK) over 1,000 messages, counted under TLS.
// docs/benchmarks-sdk.md reports the numbers.
func TestWireFootprint(t *testing.T) {
	dir, b := fakeDevice(t, true)
	one := []senml.Record{{Name: "temperature", Unit: "Cel", Value: device.Float(22.5)}}
	opts := footprintOptions(b.Addr())

	single := publishOnce(t, dir, b, opts, one)
	opts.ContentType = envelope.ContentTypeSenMLJSON
	singleJSON := publishOnce(t, dir, b, opts, one)
	opts.ContentType = 0
	batch := publishOnce(t, dir, b, opts, fiftyReadings())
	opts.Compression = envelope.EncodingDeflate
	deflate := publishOnce(t, dir, b, opts, fiftyReadings())
	opts.Compression = envelope.EncodingZstd
	zstd := publishOnce(t, dir, b, opts, fiftyReadings())
	t.Logf("MQTT payload: 1 reading %d B (JSON %d B); 50 readings %d B, deflate %d B, zstd %d B", single, singleJSON, batch, deflate, zstd)
	// The protocol's 100 bytes plus the absolute time the SDK adds.
	if single > 115 || batch > 1100 || deflate >= batch {
		t.Errorf("payloads larger than expected: single %d, batch %d, deflate %d", single, batch, deflate)
	}

	// TCP bytes per message, over 1,000 messages on one connection.
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
	const n = 1000
	for range n {
		if err := c.Publish(ctx, one...); err != nil {
			t.Fatal(err)
		}
	}
	out := float64(w.written.Load()-setupOut) / n
	in := float64(w.read.Load()-setupIn) / n
	t.Logf("TCP per message: %.1f B sent (payload %d B), %.1f B received; connection setup with the first message %d B sent, %d B received", out, single, in, setupOut, setupIn)
	// PUBLISH header (topic, packet id) and one TLS record per packet.
	if out < float64(single) || out > float64(single)+70 {
		t.Errorf("TCP bytes sent per message: got %.1f, want between %d and %d", out, single, single+70)
	}
}

// BenchmarkPublish measures the SDK's cost per message on the device:
// resolve, encode, seal (ECDSA P-256), outbox write with fsync, PUBLISH and
// PUBACK over TLS to an in-process fake broker that does not verify.
// cpu-us/msg is the process's CPU time (the fake broker's small share
// included) per message.
func BenchmarkPublish(b *testing.B) {
	one := []senml.Record{{Name: "temperature", Unit: "Cel", Value: device.Float(22.5)}}
	for _, bc := range []struct {
		name string
		opts func(*device.Options)
		recs []senml.Record
	}{
		{"acked", func(*device.Options) {}, one},
		{"nowait", func(o *device.Options) { o.NoWait = true }, one},
		{"batch50-deflate", func(o *device.Options) { o.Compression = envelope.EncodingDeflate }, fiftyReadings()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dir, br := fakeDevice(b, false)
			opts := footprintOptions(br.Addr())
			var w wireCounter
			opts.DialContext = w.dial
			bc.opts(&opts)
			c, err := device.Connect(context.Background(), dir, opts)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			if err := c.Publish(ctx, one...); err != nil {
				b.Fatal(err)
			}
			if err := c.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			wire0, cpu0 := w.total(), cpuTime()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := c.Publish(ctx, bc.recs...); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(w.total()-wire0)/float64(b.N), "wire-B/msg")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/msg")
		})
	}
}
