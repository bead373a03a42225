package device_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

// The benchmarks measure the SDK's cost per message on the device. The
// broker runs in a child process (the fake broker of fakebroker_test.go,
// verifying every signature), so that the CPU time, B/op and allocs/op of
// the benchmark process are the SDK's alone (and the test harness's).
// docs/benchmarks.md ("Device SDK footprint") reports the results.

// brokerProcEnv names the directory holding the CA for the broker child
// process; set, TestFakeBrokerProcess runs the broker.
const brokerProcEnv = "PYLON_SDK_FAKE_BROKER_DIR"

// TestFakeBrokerProcess is the broker child process of the benchmarks, as
// os/exec's TestHelperProcess: without brokerProcEnv it is skipped. It
// prints "addr HOST:PORT", then answers each line on stdin with
// "stats MESSAGES PAYLOAD_BYTES BAD_SIGNATURES", and ends when stdin is
// closed.
func TestFakeBrokerProcess(t *testing.T) {
	dir := os.Getenv(brokerProcEnv)
	if dir == "" {
		t.Skip("the benchmarks' broker process")
	}
	b := newFakeBroker(t, loadCA(t, dir), true)
	fmt.Printf("addr %s\n", b.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		payloads, bad := b.telemetry()
		sum := 0
		for _, n := range payloads {
			sum += n
		}
		fmt.Printf("stats %d %d %d\n", len(payloads), sum, bad)
	}
}

// brokerProcess is the broker child process seen from the benchmark.
type brokerProcess struct {
	addr string
	in   io.WriteCloser
	out  *bufio.Scanner
}

// startBrokerProcess runs TestFakeBrokerProcess in a child process with a
// broker certificate of ca.
func startBrokerProcess(tb testing.TB, ca *fakeCA) *brokerProcess {
	tb.Helper()
	dir := tb.TempDir()
	key, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.pem, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFakeBrokerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), brokerProcEnv+"="+dir)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		in.Close() // the child ends when its stdin does
		cmd.Wait()
	})
	p := &brokerProcess{in: in, out: bufio.NewScanner(out)}
	p.addr = p.line(tb, "addr")[0]
	return p
}

// line returns the fields after prefix of the child's next line that
// starts with it.
func (p *brokerProcess) line(tb testing.TB, prefix string) []string {
	tb.Helper()
	for p.out.Scan() {
		if f := strings.Fields(p.out.Text()); len(f) > 0 && f[0] == prefix {
			return f[1:]
		}
	}
	tb.Fatalf("broker process ended without a %q line (%v)", prefix, p.out.Err())
	return nil
}

// stats returns the broker's telemetry counters: messages, their total
// payload bytes and how many had a bad signature.
func (p *brokerProcess) stats(tb testing.TB) (msgs, bytes, bad int) {
	tb.Helper()
	if _, err := io.WriteString(p.in, "stats\n"); err != nil {
		tb.Fatal(err)
	}
	f := p.line(tb, "stats")
	if len(f) != 3 {
		tb.Fatalf("broker process answered %q", f)
	}
	if _, err := fmt.Sscan(strings.Join(f, " "), &msgs, &bytes, &bad); err != nil {
		tb.Fatal(err)
	}
	return msgs, bytes, bad
}

func loadCA(tb testing.TB, dir string) *fakeCA {
	tb.Helper()
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		tb.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		tb.Fatal(err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		tb.Fatal("bad CA files")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	return &fakeCA{cert: cert, key: key.(crypto.Signer), pem: certPEM}
}

// sensorReadings returns n temperature readings of a random walk in
// 0.01 °C steps, 10 s apart: the values a real sensor gives (most are not
// exact in a short float), unlike fiftyReadings' 1/16 °C steps.
func sensorReadings(n int) []senml.Record {
	r := rand.New(rand.NewPCG(1, 2))
	recs := make([]senml.Record, n)
	temp := 21.0
	for i := range recs {
		temp += (r.Float64() - 0.5) / 10
		recs[i] = senml.Record{Name: "temperature", Unit: "Cel", Value: device.Float(math.Round(temp*100) / 100), Time: float64(10 * (i - n))}
	}
	return recs
}

// publishScenario is one way of publishing in BenchmarkPublish.
type publishScenario struct {
	name string
	recs []senml.Record
	opts func(*device.Options)
}

func publishScenarios() []publishScenario {
	one := []senml.Record{{Name: "temperature", Unit: "Cel", Value: device.Float(22.5)}}
	none := func(*device.Options) {}
	deflate := func(o *device.Options) { o.Compression = envelope.EncodingDeflate }
	zstd := func(o *device.Options) { o.Compression = envelope.EncodingZstd }
	return []publishScenario{
		{"single", one, none},
		{"single-nowait", one, func(o *device.Options) { o.NoWait = true }},
		{"batch50", fiftyReadings(), none},
		{"batch50-deflate", fiftyReadings(), deflate},
		{"batch50-zstd", fiftyReadings(), zstd},
		{"sensor50", sensorReadings(50), none},
		{"sensor50-deflate", sensorReadings(50), deflate},
	}
}

// BenchmarkPublish measures one Publish call (one message, one reading or
// a 50-reading pack) of the SDK, end to end: resolve, encode, seal (P-256
// or Ed25519), outbox write with fsync, PUBLISH over mutual TLS, PUBACK
// from the broker, outbox removal. ns/op is the wall time of a Publish
// that waits for its PUBACK (one at a time), or of one that returns once
// queued (nowait). B/op, allocs/op and cpu-ns/msg are the process's, and
// the broker is in another process. Wire metrics, per message and per
// reading: payload-B is the MQTT payload (the signed message) the broker
// received; tcp-out-B and tcp-in-B are the TCP bytes from and to the
// device (TLS records around the MQTT PUBLISH and PUBACK packets).
func BenchmarkPublish(b *testing.B) {
	ca := newFakeCA(b)
	est := newFakeEST(b, ca)
	broker := startBrokerProcess(b, ca)
	for _, kt := range []device.KeyType{device.KeyP256, device.KeyEd25519} {
		dir := filepath.Join(b.TempDir(), "dev")
		if _, err := device.Enroll(context.Background(), est.URL, "good", ca.pem, dir, device.WithKeyType(kt)); err != nil {
			b.Fatal(err)
		}
		for _, sc := range publishScenarios() {
			b.Run(string(kt)+"/"+sc.name, func(b *testing.B) { benchPublish(b, dir, broker, sc) })
		}
	}
}

func benchPublish(b *testing.B, dir string, broker *brokerProcess, sc publishScenario) {
	opts := footprintOptions(broker.addr)
	opts.MaxQueued, opts.MaxQueueBytes = 1<<20, 1<<32 // nowait: b.N may pass the default bound
	var w wireCounter
	opts.DialContext = w.dial
	sc.opts(&opts)
	c, err := device.Connect(context.Background(), dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	// Warm up: connected, subscribed to the errors topic, first message
	// acknowledged.
	if err := c.Publish(ctx, sc.recs...); err != nil {
		b.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	msgs0, bytes0, bad0 := broker.stats(b)
	out0, in0 := w.written.Load(), w.read.Load()
	cpu0, cpuOK := cpuTime()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.Publish(ctx, sc.recs...); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu1, _ := cpuTime()
	out, in := w.written.Load()-out0, w.read.Load()-in0
	msgs, bytes, bad := broker.stats(b)
	// Every message reached the broker once, correctly signed: nothing
	// resent, nothing lost.
	if msgs-msgs0 != b.N || bad != bad0 {
		b.Fatalf("broker got %d messages (%d with bad signatures), want %d good", msgs-msgs0, bad-bad0, b.N)
	}
	n, per := float64(b.N), float64(len(sc.recs))
	payload := float64(bytes-bytes0) / n
	b.ReportMetric(payload, "payload-B/msg")
	b.ReportMetric(payload/per, "payload-B/reading")
	b.ReportMetric(float64(out)/n, "tcp-out-B/msg")
	b.ReportMetric(float64(in)/n, "tcp-in-B/msg")
	b.ReportMetric(float64(out+in)/n/per, "tcp-B/reading")
	if cpuOK {
		b.ReportMetric(float64(cpu1-cpu0)/n, "cpu-ns/msg")
	}
}

// heapAlloc returns the live heap after a full collection.
func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkClientMemory measures the heap a Client holds: the live heap
// after a full GC with the client, less that before it. connected-empty:
// connected, one message acknowledged, outbox empty. offline-full: no
// broker reachable, then the outbox filled to its default bound of
// device.DefaultMaxQueued single-reading messages (Publish with NoWait);
// heap-B/queued-msg is the growth per queued message (the outbox keeps
// messages on disk and an index entry in memory). An op is one client's
// life: connect, (fill,) measure, close.
func BenchmarkClientMemory(b *testing.B) {
	ca := newFakeCA(b)
	est := newFakeEST(b, ca)
	broker := startBrokerProcess(b, ca)
	one := []senml.Record{{Name: "temperature", Unit: "Cel", Value: device.Float(22.5)}}
	enroll := func(b *testing.B) string {
		dir := filepath.Join(b.TempDir(), "dev")
		if _, err := device.Enroll(context.Background(), est.URL, "good", ca.pem, dir); err != nil {
			b.Fatal(err)
		}
		return dir
	}
	b.Run("connected-empty", func(b *testing.B) {
		dir := enroll(b)
		var heap, goroutines float64
		for range b.N {
			h0, g0 := heapAlloc(), runtime.NumGoroutine()
			c, err := device.Connect(context.Background(), dir, footprintOptions(broker.addr))
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Publish(context.Background(), one...); err != nil { // connected, acknowledged
				b.Fatal(err)
			}
			heap += float64(heapAlloc()) - float64(h0)
			goroutines += float64(runtime.NumGoroutine() - g0)
			c.Close()
		}
		b.ReportMetric(heap/float64(b.N), "heap-B")
		b.ReportMetric(goroutines/float64(b.N), "goroutines")
	})
	b.Run("offline-full", func(b *testing.B) {
		var empty, full, disk float64
		for range b.N {
			dir := enroll(b)
			opts := footprintOptions(closedAddr(b))
			opts.NoWait = true
			h0 := heapAlloc()
			c, err := device.Connect(context.Background(), dir, opts)
			if err != nil {
				b.Fatal(err)
			}
			h1 := heapAlloc()
			for {
				err := c.Publish(context.Background(), one...)
				if errors.Is(err, device.ErrQueueFull) {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			h2 := heapAlloc()
			s := c.Stats()
			if s.Queued != device.DefaultMaxQueued || s.Connected {
				b.Fatalf("got %d messages queued (connected: %v), want %d offline", s.Queued, s.Connected, device.DefaultMaxQueued)
			}
			empty += float64(h1) - float64(h0)
			full += float64(h2) - float64(h0)
			disk += float64(s.QueuedBytes)
			c.Close()
		}
		n := float64(b.N)
		b.ReportMetric(empty/n, "heap-empty-B")
		b.ReportMetric(full/n, "heap-full-B")
		b.ReportMetric((full-empty)/n/device.DefaultMaxQueued, "heap-B/queued-msg")
		b.ReportMetric(disk/n, "disk-B")
	})
}
