package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/est"
	"github.com/pylonhq/pylon/httpapi"
	"github.com/pylonhq/pylon/senml"
)

// Limits and constants of `pylon bench ingest`.
const (
	maxBenchDevices   = 10_000
	benchSetupWorkers = 8 // parallel enrollments and connections

	// benchSeqBase is each device's first sequence number: that of a
	// device that has been publishing for a while, so that the number
	// takes its long-run 5 bytes of CBOR rather than a new device's 1 to 3.
	benchSeqBase = 1_000_000

	// benchDrain bounds the wait for outstanding acknowledgements (and,
	// with mosquitto, deliveries) after the last message is sent.
	benchDrain = 30 * time.Second

	benchDialTimeout  = 10 * time.Second
	benchCountTimeout = 5 * time.Minute

	// benchReadingStep is the interval between the readings of a pack, and
	// benchMaxSpan bounds how far back the first pack of a device starts,
	// well within what the platform accepts (senml.DefaultMaxPast).
	benchReadingStep = 10 * time.Second
	benchMaxSpan     = 28 * 24 * time.Hour

	// benchProgress is how often the rate so far is logged.
	benchProgress = 5 * time.Second
)

const benchIngestUsage = `usage: pylon bench ingest [--devices D] [-n N | --duration T] [--inflight W] [--rate R]
                          [--records K] [--compress deflate|zstd] [--key p256|ed25519]
                          [--mqtt-addr HOST:PORT] [--verify=false] [-o table|json]
       pylon bench ingest --mosquitto HOST:PORT [--mosquitto-ca FILE [--mosquitto-cert FILE --mosquitto-key FILE]] ...

Measures telemetry ingest of a running Pylon server. It creates a fleet
enrollment token through the API (--server, --token, --ca as for the admin
commands), makes D device keys here and enrolls them over EST, connects each
device to the broker over mutual TLS with MQTT 5 (the address the server
announces, or --mqtt-addr), and publishes signed SenML messages at QoS 1 with
W unacknowledged messages at most per device: as fast as the acknowledgements
allow, or paced at R messages a second in all (--rate). A PUBACK leaves the
server only after the readings are committed, so the latency reported,
publish to PUBACK, is publish to commit; in a paced run it counts from the
time the message was due, so that a generator that falls behind shows as
latency rather than hiding it.

A message holds K readings (default 1) of a temperature that random-walks in
steps of 1/16 °C, a DS18B20's resolution (CBOR holds such values in a 3-byte
half float): one reading is [{n:"temp",u:"Cel",v:21.5625}], timed on
receipt; a pack of K > 1 is K readings of the series "room1/temp" 10 s apart
(bn, bu and an absolute bt in the first record, then v and t), each pack
continuing where the device's previous one ended, as a device uploading
what it measured since would (its first pack starts far enough back, at
most 28 days, for the last to end now). Packs are SenML CBOR, optionally
compressed, sealed with the device's key; sequence numbers start at 1000000.

With -n (default 100000) the N messages are sealed before the clock starts,
as devices seal their own messages; the sealing cost is reported apart. With
--duration alone, an unpaced run seals during the run, on the generator's
CPU (a paced one pre-seals R × T messages). --duration with -n stops at
whichever comes first.

Afterwards it asks the API for the number of readings stored for each device
and reports acknowledged against stored readings; "lost" counts acknowledged
readings that are not stored (it must be 0). The devices stay registered
(label bench=<run>).

--mosquitto HOST:PORT publishes the same messages (same sizes, same load) at
QoS 1 through a plain MQTT broker instead, with one subscriber at QoS 1 on
devices/+/telemetry that acknowledges and counts what it receives; "lost"
then counts acknowledged messages never delivered to the subscriber, and the
run ends when everything acknowledged was delivered. Plain TCP unless
--mosquitto-ca is given (TLS, with --mosquitto-cert and --mosquitto-key as
every device's client certificate).

Flags:
`

// ingestOptions are the flags of `pylon bench ingest`.
type ingestOptions struct {
	devices   int
	n         int // messages in all; 0 when sealing during an unpaced timed run
	duration  time.Duration
	inflight  int
	rate      float64
	records   int
	compress  string
	key       string
	mqttAddr  string
	verify    bool
	mosquitto string
	mosqCA    string
	mosqCert  string
	mosqKey   string
}

// ingestSummary is what `pylon bench ingest` reports.
type ingestSummary struct {
	Broker   string  `json:"broker"` // "pylon" or "mosquitto"
	Addr     string  `json:"addr"`
	TLS      bool    `json:"tls"`
	Key      string  `json:"key"`
	Devices  int     `json:"devices"`
	Inflight int     `json:"inflight"` // per device, after the broker's receive maximum
	Records  int     `json:"records"`  // readings per message
	Compress string  `json:"compress,omitempty"`
	Rate     float64 `json:"rate"` // paced total messages/s; 0: unpaced

	Sealing    string  `json:"sealing"`         // "before": pre-sealed; "during": sealed in the run
	SealMicros float64 `json:"seal_us_per_msg"` // encode, compress and sign, per message on one core

	Sent         int64 `json:"sent"`
	Acknowledged int64 `json:"acknowledged"` // PUBACK with a success code
	Refused      int64 `json:"refused"`      // PUBACK with a failure code
	Unanswered   int64 `json:"unanswered"`   // sent, no PUBACK by the end
	Errors       int64 `json:"errors"`       // connection failures

	Seconds        float64 `json:"seconds"`
	MsgsPerSec     float64 `json:"msgs_per_sec"`     // acknowledged
	ReadingsPerSec float64 `json:"readings_per_sec"` // acknowledged
	Latency        struct {
		P50 float64 `json:"p50"`
		P90 float64 `json:"p90"`
		P99 float64 `json:"p99"`
		Max float64 `json:"max"`
	} `json:"latency_ms"` // publish (or due time, paced) to PUBACK

	PayloadPerMsg     float64 `json:"payload_bytes_per_msg"` // MQTT payload: the sealed message
	PayloadPerReading float64 `json:"payload_bytes_per_reading"`

	AckedReadings  int64  `json:"acknowledged_readings"`
	StoredReadings *int64 `json:"stored_readings,omitempty"` // Pylon, from the API
	Delivered      *int64 `json:"delivered,omitempty"`       // mosquitto: messages the subscriber got
	Lost           int64  `json:"lost"`                      // acknowledged, not stored (readings) or not delivered (messages)
	FirstError     string `json:"first_error,omitempty"`
}

// benchDevice is one simulated device and its connection.
type benchDevice struct {
	index  int
	id     string
	topic  string
	signer crypto.Signer
	cert   *tls.Certificate // nil: no client certificate
	gen    packGen
	msgs   [][]byte // pre-sealed; nil when sealing during the run
	count  int      // messages to send
	seq    uint64   // last sequence number sealed

	conn    net.Conn
	br      *bufio.Reader
	window  int
	free    chan uint16    // packet IDs not in flight
	due     []atomic.Int64 // by packet ID: when the message was sent (or due), ns since the start
	dead    chan struct{}  // closed when the reader stops
	reading bool           // the reader was started
	closing atomic.Bool

	// Written by the writer, read after it stops.
	sent, payload int64
	sealNanos     int64
	// Written by the reader, read after it stops.
	lat []time.Duration

	acked, refused atomic.Int64
	lastAck        atomic.Int64 // ns since the start
}

// ingestRun is one run of the bench.
type ingestRun struct {
	o        ingestOptions
	log      io.Writer // progress
	broker   string
	addr     string
	tls      *tls.Config // nil: plain TCP
	devs     []*benchDevice
	start    time.Time
	name     string // resolved SenML name of the readings
	live     bool   // sealing during the run
	errs     atomic.Int64
	errOnce  sync.Once
	firstErr string
}

// benchIngest implements `pylon bench ingest`.
func (e *cliEnv) benchIngest(ctx context.Context, args []string) error {
	fs := e.flags("bench ingest")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), benchIngestUsage)
		fs.PrintDefaults()
	}
	var o ingestOptions
	fs.IntVar(&o.devices, "devices", 100, "simulated `devices`, each on its own connection")
	fs.IntVar(&o.n, "n", 100_000, "`messages` to publish in all, sealed before the clock")
	fs.DurationVar(&o.duration, "duration", 0, "stop publishing after this `time` (0: after -n messages)")
	fs.IntVar(&o.inflight, "inflight", 8, "unacknowledged messages per device at most (capped by the broker's receive maximum)")
	fs.Float64Var(&o.rate, "rate", 0, "pace at this many `messages/s` in all (0: as fast as acknowledgements allow)")
	fs.IntVar(&o.records, "records", 1, "readings per message")
	fs.StringVar(&o.compress, "compress", "", "compress packs: deflate or zstd (default none)")
	fs.StringVar(&o.key, "key", "p256", "device key type: p256 or ed25519")
	fs.StringVar(&o.mqttAddr, "mqtt-addr", "", "broker `host:port` (default: the one the server announces)")
	fs.BoolVar(&o.verify, "verify", true, "count the stored readings through the API afterwards")
	fs.StringVar(&o.mosquitto, "mosquitto", "", "measure a plain MQTT broker at `host:port` instead (no Pylon server needed)")
	fs.StringVar(&o.mosqCA, "mosquitto-ca", "", "connect to --mosquitto over TLS, trusting this CA certificate `file`")
	fs.StringVar(&o.mosqCert, "mosquitto-cert", "", "client certificate `file` for --mosquitto over TLS")
	fs.StringVar(&o.mosqKey, "mosquitto-key", "", "client key `file` for --mosquitto-cert")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the load generator's publishing phase to `file`")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	nSet := isSet(fs, "n")
	switch {
	case len(pos) > 0:
		return usageErrorf("bench ingest: unexpected argument %q", pos[0])
	case o.devices < 1 || o.devices > maxBenchDevices:
		return usageErrorf("bench ingest: --devices must be 1 to %d", maxBenchDevices)
	case o.n < 1:
		return usageErrorf("bench ingest: -n must be positive")
	case o.duration < 0:
		return usageErrorf("bench ingest: --duration must not be negative")
	case o.inflight < 1 || o.inflight > math.MaxUint16:
		return usageErrorf("bench ingest: --inflight must be 1 to %d", math.MaxUint16)
	case o.rate < 0 || math.IsNaN(o.rate) || math.IsInf(o.rate, 0):
		return usageErrorf("bench ingest: --rate must be a positive number of messages/s, or 0")
	case o.records < 1 || o.records > pylon.MaxReadingsPerMessage:
		return usageErrorf("bench ingest: --records must be 1 to %d", pylon.MaxReadingsPerMessage)
	case o.compress != envelope.EncodingNone && o.compress != envelope.EncodingDeflate && o.compress != envelope.EncodingZstd:
		return usageErrorf("bench ingest: --compress must be deflate or zstd")
	case o.key != "p256" && o.key != "ed25519":
		return usageErrorf("bench ingest: --key must be p256 or ed25519")
	case o.mosquitto == "" && (o.mosqCA != "" || o.mosqCert != "" || o.mosqKey != ""):
		return usageErrorf("bench ingest: --mosquitto-ca, --mosquitto-cert and --mosquitto-key need --mosquitto")
	case (o.mosqCert == "") != (o.mosqKey == ""):
		return usageErrorf("bench ingest: give both --mosquitto-cert and --mosquitto-key, or neither")
	case o.mosqCert != "" && o.mosqCA == "":
		return usageErrorf("bench ingest: --mosquitto-cert needs --mosquitto-ca (TLS)")
	case e.output != "table" && e.output != "json":
		return usageErrorf("bench ingest: -o must be table or json")
	}
	prof, err := createCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer prof.stop()
	r := &ingestRun{o: o, log: e.stderr, name: "temp"}
	if o.records > 1 {
		r.name = "room1/temp"
	}
	if !nSet && o.duration > 0 {
		if o.rate > 0 {
			r.o.n = int(math.Ceil(o.rate * o.duration.Seconds()))
		} else {
			r.live = true
		}
	}
	if !r.live && r.o.n < o.devices {
		return usageErrorf("bench ingest: -n must be at least --devices")
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	var c *httpapi.Client
	if o.mosquitto != "" {
		err = r.setupMosquitto()
	} else {
		if c, err = e.client(); err != nil {
			return err
		}
		err = r.setupPylon(ctx, c, e.stderr)
	}
	if err != nil {
		return err
	}
	sealNanos := r.preseal()
	if !r.live {
		fmt.Fprintf(e.stderr, "sealed %d messages (%.1f µs each)\n", r.o.n, float64(sealNanos)/float64(r.o.n)/1e3)
	}
	if err := r.connect(ctx); err != nil {
		r.close()
		return err
	}
	defer r.close()
	var sub *benchSubscriber
	if o.mosquitto != "" {
		if sub, err = r.subscribe(ctx); err != nil {
			return err
		}
		defer sub.close()
	}

	if err := prof.start(); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "publishing from %d devices, %d in flight each...\n", len(r.devs), r.devs[0].window)
	elapsed := r.publish(ctx, sub)
	prof.stop()
	r.close()
	s := r.summarize(elapsed)
	if sub != nil {
		delivered := sub.total.Load()
		s.Delivered = &delivered
		for _, d := range r.devs {
			s.Lost += max(0, d.acked.Load()-sub.counts[d.topic].Load())
		}
	}
	if c != nil && o.verify {
		fmt.Fprintf(e.stderr, "counting stored readings...\n")
		// Counted even after an interrupt: the summary needs it.
		countCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), benchCountTimeout)
		defer cancel()
		stored, lost, err := r.countStored(countCtx, c)
		if err != nil {
			return fmt.Errorf("count stored readings: %w", err)
		}
		s.StoredReadings, s.Lost = &stored, lost
	}
	return e.print(s, func(w *tabwriter.Writer) { printIngestSummary(w, &s) })
}

// setupPylon enrolls the devices with a new fleet token and finds the
// broker.
func (r *ingestRun) setupPylon(ctx context.Context, c *httpapi.Client, log io.Writer) error {
	r.broker = "pylon"
	r.addr = r.o.mqttAddr
	if r.addr == "" {
		info, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("server info: %w", err)
		}
		if r.addr, err = mqttAddrOf(info.MQTTAddr, c.BaseURL); err != nil {
			return err
		}
	}
	run := pylon.NewID()[:6]
	tok, err := c.CreateEnrollmentToken(ctx, httpapi.EnrollmentTokenRequest{Labels: map[string]string{"bench": run}, Uses: r.o.devices, TTL: "1h"})
	if err != nil {
		return fmt.Errorf("create enrollment token: %w", err)
	}
	fmt.Fprintf(log, "enrolling %d %s devices (label bench=%s)...\n", r.o.devices, r.o.key, run)
	r.newDevices()
	roots := c.HTTP.Transport.(*http.Transport).TLSClientConfig.RootCAs
	err = r.forEachDevice(ctx, func(d *benchDevice) error {
		cert, err := estEnroll(ctx, c.HTTP, c.BaseURL, tok.Token, d.signer, fmt.Sprintf("bench-%s-%d", run, d.index))
		if err != nil {
			return fmt.Errorf("enroll device %d: %w", d.index, err)
		}
		d.id = cert.Subject.CommonName
		d.topic = "devices/" + d.id + "/telemetry"
		d.cert = &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: d.signer, Leaf: cert}
		return nil
	})
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(r.addr)
	r.tls = &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
	return nil
}

// setupMosquitto makes devices with made-up IDs for a plain broker.
func (r *ingestRun) setupMosquitto() error {
	r.broker, r.addr = "mosquitto", r.o.mosquitto
	if _, _, err := net.SplitHostPort(r.addr); err != nil {
		return usageErrorf("bench ingest: --mosquitto: want host:port, got %q", r.addr)
	}
	r.newDevices()
	for _, d := range r.devs {
		d.id = pylon.NewID()
		d.topic = "devices/" + d.id + "/telemetry"
	}
	if r.o.mosqCA == "" {
		return nil
	}
	caPEM, err := os.ReadFile(r.o.mosqCA)
	if err != nil {
		return fmt.Errorf("read --mosquitto-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("--mosquitto-ca %s holds no PEM certificate", r.o.mosqCA)
	}
	host, _, _ := net.SplitHostPort(r.addr)
	r.tls = &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}
	if r.o.mosqCert != "" {
		cert, err := tls.LoadX509KeyPair(r.o.mosqCert, r.o.mosqKey)
		if err != nil {
			return fmt.Errorf("--mosquitto-cert: %w", err)
		}
		for _, d := range r.devs {
			d.cert = &cert
		}
	}
	return nil
}

// newDevices makes the devices and their keys and shares out the messages.
func (r *ingestRun) newDevices() {
	r.devs = make([]*benchDevice, r.o.devices)
	for i := range r.devs {
		d := &benchDevice{index: i}
		span := benchMaxSpan
		if r.live {
			d.count = math.MaxInt
		} else {
			d.count = r.o.n / r.o.devices
			if i < r.o.n%r.o.devices {
				d.count++
			}
			span = min(span, time.Duration(d.count*r.o.records)*benchReadingStep)
		}
		d.gen = newPackGen(uint64(i), r.o.records, time.Now().Add(-span))
		if r.o.key == "ed25519" {
			_, d.signer, _ = ed25519.GenerateKey(rand.Reader)
		} else {
			d.signer, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		r.devs[i] = d
	}
}

// forEachDevice runs fn for every device, a few at a time, and returns
// the first error.
func (r *ingestRun) forEachDevice(ctx context.Context, fn func(*benchDevice) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range min(benchSetupWorkers, len(r.devs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(r.devs) || ctx.Err() != nil {
					return
				}
				if err := fn(r.devs[i]); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// preseal seals every device's messages, on all cores, unless sealing
// happens during the run. It returns the sealing time summed over cores.
func (r *ingestRun) preseal() int64 {
	if r.live {
		return 0
	}
	var total atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(r.devs) {
					return
				}
				d := r.devs[i]
				d.msgs = make([][]byte, d.count)
				for k := range d.msgs {
					d.msgs[k] = r.seal(d)
				}
				total.Add(d.sealNanos)
			}
		}()
	}
	wg.Wait()
	return total.Load()
}

// seal makes the device's next message and adds its cost to d.sealNanos.
func (r *ingestRun) seal(d *benchDevice) []byte {
	t0 := time.Now()
	d.seq++
	pack, err := senml.EncodeCBOR(d.gen.next())
	if err != nil {
		panic(err) // the generator makes valid packs
	}
	msg, err := envelope.Seal(d.signer, benchSeqBase+d.seq-1, pack, envelope.SealOptions{Encoding: r.o.compress})
	if err != nil {
		panic(err)
	}
	d.sealNanos += int64(time.Since(t0))
	return msg
}

// connect connects every device.
func (r *ingestRun) connect(ctx context.Context) error {
	return r.forEachDevice(ctx, func(d *benchDevice) error {
		conn, br, ack, err := dialMQTT(ctx, r.addr, r.tlsFor(d), d.id, 0)
		if err != nil {
			return fmt.Errorf("connect device %d (%s): %w", d.index, d.id, err)
		}
		d.conn, d.br = conn, br
		d.window = r.o.inflight
		if ack.Properties != nil && ack.Properties.ReceiveMaximum != nil {
			d.window = min(d.window, int(*ack.Properties.ReceiveMaximum))
		}
		d.free = make(chan uint16, d.window)
		for id := 1; id <= d.window; id++ {
			d.free <- uint16(id)
		}
		d.due = make([]atomic.Int64, d.window+1)
		d.dead = make(chan struct{})
		return nil
	})
}

func (r *ingestRun) tlsFor(d *benchDevice) *tls.Config {
	if r.tls == nil {
		return nil
	}
	c := r.tls.Clone()
	if d.cert != nil {
		c.Certificates = []tls.Certificate{*d.cert}
	}
	return c
}

// publish runs the load and returns the time from the start to the last
// acknowledgement (and, with a subscriber, the last delivery).
func (r *ingestRun) publish(ctx context.Context, sub *benchSubscriber) time.Duration {
	pubCtx := ctx
	if r.o.duration > 0 {
		var cancel context.CancelFunc
		pubCtx, cancel = context.WithTimeout(ctx, r.o.duration)
		defer cancel()
	}
	var interval time.Duration // per device, paced
	if r.o.rate > 0 {
		interval = time.Duration(float64(len(r.devs)) / r.o.rate * float64(time.Second))
	}
	r.start = time.Now()
	var wg sync.WaitGroup
	for _, d := range r.devs {
		d.reading = true
		go r.read(d)
		wg.Add(1)
		go func() {
			defer wg.Done()
			offset := time.Duration(d.index) * interval / time.Duration(len(r.devs))
			r.write(pubCtx, d, offset, interval)
			r.drain(ctx, d)
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	r.progress(done)
	var last int64
	for _, d := range r.devs {
		last = max(last, d.lastAck.Load())
	}
	if sub != nil {
		if t := sub.wait(ctx, r.devs); t != 0 {
			last = max(last, t-r.start.UnixNano())
		}
	}
	if last == 0 {
		return time.Since(r.start)
	}
	return time.Duration(last)
}

// progress reports the acknowledgement rate of every benchProgress
// interval on the log until done is closed, so that a rate that changes as
// the store grows shows.
func (r *ingestRun) progress(done <-chan struct{}) {
	tick := time.NewTicker(benchProgress)
	defer tick.Stop()
	var before int64
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		var acked int64
		for _, d := range r.devs {
			acked += d.acked.Load()
		}
		rate := float64(acked-before) / benchProgress.Seconds()
		fmt.Fprintf(r.log, "%5.0fs %10d acknowledged %9.0f msgs/s %11.0f readings/s\n",
			time.Since(r.start).Seconds(), acked, rate, rate*float64(r.o.records))
		before = acked
	}
}

// write publishes the device's messages. Packets are buffered while the
// window has room and flushed before waiting, so that a device with W in
// flight sends bursts, as one with an outbox does.
func (r *ingestRun) write(ctx context.Context, d *benchDevice, offset, interval time.Duration) {
	bw := bufio.NewWriterSize(d.conn, 32<<10)
	fail := func(err error) { r.fail(d, err) }
	var pkt []byte
	var timer *time.Timer
loop:
	for i := 0; i < d.count && ctx.Err() == nil; i++ {
		var due time.Duration
		if interval > 0 {
			due = offset + time.Duration(i)*interval
			if wait := due - time.Since(r.start); wait > 0 {
				if err := bw.Flush(); err != nil {
					fail(err)
					break
				}
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case <-timer.C:
				case <-ctx.Done():
					break loop
				case <-d.dead:
					break loop
				}
			}
		}
		var id uint16
		select {
		case id = <-d.free:
		default:
			if err := bw.Flush(); err != nil {
				fail(err)
				break loop
			}
			select {
			case id = <-d.free:
			case <-ctx.Done():
				break loop
			case <-d.dead:
				break loop
			}
		}
		var msg []byte
		if d.msgs != nil {
			msg = d.msgs[i]
			d.msgs[i] = nil
		} else {
			msg = r.seal(d)
		}
		if interval == 0 {
			due = time.Since(r.start)
		}
		d.due[id].Store(int64(due))
		pkt = appendPublish(pkt[:0], d.topic, id, msg)
		if _, err := bw.Write(pkt); err != nil {
			fail(err)
			break
		}
		d.sent++
		d.payload += int64(len(msg))
	}
	if err := bw.Flush(); err != nil {
		fail(err)
	}
}

// drain waits until every message in flight is answered, the connection
// is lost or benchDrain has passed.
func (r *ingestRun) drain(ctx context.Context, d *benchDevice) {
	ctx, cancel := context.WithTimeout(ctx, benchDrain)
	defer cancel()
	for range d.window {
		select {
		case <-d.free:
		case <-d.dead:
			return
		case <-ctx.Done():
			return
		}
	}
}

// read handles what the broker sends a device: PUBACKs and DISCONNECT.
func (r *ingestRun) read(d *benchDevice) {
	defer close(d.dead)
	for {
		cp, err := packets.ReadPacket(d.br)
		if err != nil {
			if !d.closing.Load() {
				r.fail(d, fmt.Errorf("read: %w", err))
			}
			return
		}
		switch p := cp.Content.(type) {
		case *packets.Puback:
			now := time.Since(r.start)
			if p.PacketID < 1 || int(p.PacketID) > d.window {
				r.fail(d, fmt.Errorf("PUBACK for unknown packet ID %d", p.PacketID))
				return
			}
			if p.ReasonCode < 0x80 {
				d.acked.Add(1)
				d.lat = append(d.lat, now-time.Duration(d.due[p.PacketID].Load()))
				d.lastAck.Store(int64(now))
			} else {
				d.refused.Add(1)
				r.noteError(fmt.Errorf("device %s: PUBACK %#x (%s) %s", d.id, p.ReasonCode, p.Reason(), reasonString(p.Properties)))
			}
			select {
			case d.free <- p.PacketID:
			default:
				r.fail(d, fmt.Errorf("a second PUBACK for packet ID %d", p.PacketID))
				return
			}
		case *packets.Disconnect:
			r.fail(d, fmt.Errorf("broker disconnected: %#x (%s) %s", p.ReasonCode, p.Reason(), reasonString(p.Properties)))
			return
		}
	}
}

func reasonString(p *packets.Properties) string {
	if p == nil {
		return ""
	}
	return p.ReasonString
}

// fail records a connection failure of the device and closes it.
func (r *ingestRun) fail(d *benchDevice, err error) {
	if d.closing.Swap(true) {
		return
	}
	r.errs.Add(1)
	r.noteError(fmt.Errorf("device %s: %w", d.id, err))
	d.conn.Close()
}

func (r *ingestRun) noteError(err error) {
	r.errOnce.Do(func() { r.firstErr = err.Error() })
}

// close disconnects every connected device.
func (r *ingestRun) close() {
	for _, d := range r.devs {
		if d.conn == nil || d.closing.Swap(true) {
			continue
		}
		_ = d.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = d.conn.Write([]byte{packets.DISCONNECT << 4, 0})
		d.conn.Close()
	}
	for _, d := range r.devs {
		if d.reading {
			<-d.dead // lat is complete
		}
	}
}

// summarize adds up the devices' counts and latencies, once the devices
// are closed.
func (r *ingestRun) summarize(elapsed time.Duration) ingestSummary {
	s := ingestSummary{
		Broker: r.broker, Addr: r.addr, TLS: r.tls != nil, Key: r.o.key,
		Devices: len(r.devs), Inflight: r.devs[0].window, Records: r.o.records,
		Compress: r.o.compress, Rate: r.o.rate, Sealing: "before",
		Errors: r.errs.Load(), FirstError: r.firstErr, Seconds: elapsed.Seconds(),
	}
	var lat []time.Duration
	var payload, sealed, sealNanos int64
	for _, d := range r.devs {
		s.Sent += d.sent
		s.Acknowledged += d.acked.Load()
		s.Refused += d.refused.Load()
		payload += d.payload
		lat = append(lat, d.lat...)
		sealed += int64(d.seq)
		sealNanos += d.sealNanos
	}
	s.Unanswered = s.Sent - s.Acknowledged - s.Refused
	if r.live {
		s.Sealing = "during"
	}
	if sealed > 0 {
		s.SealMicros = float64(sealNanos) / float64(sealed) / 1e3
	}
	if s.Sent > 0 {
		s.PayloadPerMsg = float64(payload) / float64(s.Sent)
		s.PayloadPerReading = s.PayloadPerMsg / float64(r.o.records)
	}
	s.AckedReadings = s.Acknowledged * int64(r.o.records)
	if elapsed > 0 {
		s.MsgsPerSec = float64(s.Acknowledged) / elapsed.Seconds()
		s.ReadingsPerSec = float64(s.AckedReadings) / elapsed.Seconds()
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(p float64) float64 { return ms(lat[min(len(lat)-1, int(p*float64(len(lat))))]) }
		s.Latency.P50, s.Latency.P90, s.Latency.P99 = pct(0.50), pct(0.90), pct(0.99)
		s.Latency.Max = ms(lat[len(lat)-1])
	}
	return s
}

// countStored asks the API how many readings of the bench's series each
// device has, and returns the total and the acknowledged readings missing.
func (r *ingestRun) countStored(ctx context.Context, c *httpapi.Client) (stored, lost int64, err error) {
	from, to := r.start.Add(-benchMaxSpan-time.Hour), time.Now().Add(time.Hour)
	var sum, missing atomic.Int64
	err = r.forEachDevice(ctx, func(d *benchDevice) error {
		buckets, err := c.AggregateReadings(ctx, pylon.AggregateFilter{
			DeviceID: d.id, Name: r.name, Agg: pylon.AggCount, From: from, To: to, Bucket: 24 * time.Hour,
		})
		if err != nil {
			return fmt.Errorf("device %s: %w", d.id, err)
		}
		var n int64
		for _, b := range buckets {
			n += b.Count
		}
		sum.Add(n)
		missing.Add(max(0, d.acked.Load()*int64(r.o.records)-n))
		return nil
	})
	return sum.Load(), missing.Load(), err
}

func printIngestSummary(w *tabwriter.Writer, s *ingestSummary) {
	transport := "plain TCP"
	if s.TLS {
		transport = "TLS"
	}
	pace := "unpaced"
	if s.Rate > 0 {
		pace = fmt.Sprintf("paced at %.0f msgs/s", s.Rate)
	}
	comp := "uncompressed"
	if s.Compress != "" {
		comp = s.Compress
	}
	fmt.Fprintf(w, "broker\t%s at %s (%s, MQTT 5, QoS 1)\n", s.Broker, s.Addr, transport)
	fmt.Fprintf(w, "load\t%d devices × %d in flight, %s; %s keys, %d reading(s)/message, SenML CBOR %s\n",
		s.Devices, s.Inflight, pace, s.Key, s.Records, comp)
	fmt.Fprintf(w, "messages\t%d sent, %d acknowledged, %d refused, %d unanswered; %d connection errors\n",
		s.Sent, s.Acknowledged, s.Refused, s.Unanswered, s.Errors)
	fmt.Fprintf(w, "rate\t%.0f msgs/s, %.0f readings/s acknowledged over %.2f s\n", s.MsgsPerSec, s.ReadingsPerSec, s.Seconds)
	from := "publish"
	if s.Rate > 0 {
		from = "due time"
	}
	fmt.Fprintf(w, "latency\t%s → PUBACK: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n", from, s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.Max)
	fmt.Fprintf(w, "payload\t%.1f B/message, %.1f B/reading (MQTT payload)\n", s.PayloadPerMsg, s.PayloadPerReading)
	when := "before the clock"
	if s.Sealing == "during" {
		when = "during the run"
	}
	fmt.Fprintf(w, "sealing\t%s, %.1f µs/message on one core (encode, compress, sign)\n", when, s.SealMicros)
	switch {
	case s.StoredReadings != nil:
		fmt.Fprintf(w, "stored\t%d readings stored, %d acknowledged, %d acknowledged but missing\n", *s.StoredReadings, s.AckedReadings, s.Lost)
	case s.Delivered != nil:
		fmt.Fprintf(w, "delivered\t%d messages to the subscriber, %d acknowledged, %d acknowledged but not delivered\n", *s.Delivered, s.Acknowledged, s.Lost)
	}
	if s.FirstError != "" {
		fmt.Fprintf(w, "first error\t%s\n", s.FirstError)
	}
}

// packGen makes one device's SenML packs: a temperature random-walking in
// steps of 1/16 °C around 21 °C.
type packGen struct {
	rng     *mrand.Rand
	sixteen int // the temperature in 1/16 °C
	records int
	clock   time.Time // time of the next reading in a pack
}

// newPackGen returns the generator of a device whose packs of records > 1
// readings start at clock.
func newPackGen(seed uint64, records int, clock time.Time) packGen {
	rng := mrand.New(mrand.NewPCG(seed, 0x9e3779b97f4a7c15))
	return packGen{rng: rng, sixteen: 21*16 + rng.IntN(33) - 16, records: records, clock: clock.Truncate(time.Second)}
}

// next returns the next pack: one reading without a time (now), or records
// readings of room1/temp benchReadingStep apart that continue where the
// previous pack ended, as a device that uploads what it measured since
// would send. Readings are never in the future: once the clock reaches
// now, packs end now and overlap.
func (g *packGen) next() []senml.Record {
	value := func() *float64 {
		g.sixteen += g.rng.IntN(3) - 1
		g.sixteen = min(max(g.sixteen, 16*16), 30*16)
		v := float64(g.sixteen) / 16
		return &v
	}
	if g.records == 1 {
		return []senml.Record{{Name: "temp", Unit: "Cel", Value: value()}}
	}
	step := benchReadingStep.Seconds()
	recs := make([]senml.Record, g.records)
	for i := range recs {
		recs[i] = senml.Record{Value: value(), Time: step * float64(i)}
	}
	span := time.Duration(g.records) * benchReadingStep
	if latest := time.Now().Add(-span).Truncate(time.Second); g.clock.After(latest) {
		g.clock = latest
	}
	recs[0].BaseName, recs[0].BaseUnit = "room1/temp", "Cel"
	recs[0].BaseTime = float64(g.clock.Unix())
	g.clock = g.clock.Add(span)
	return recs
}

// appendPublish appends an MQTT 5 PUBLISH at QoS 1 without properties.
func appendPublish(b []byte, topic string, id uint16, payload []byte) []byte {
	rem := 2 + len(topic) + 2 + 1 + len(payload)
	b = append(b, packets.PUBLISH<<4|1<<1)
	b = binary.AppendUvarint(b, uint64(rem)) // MQTT's variable byte integer is LEB128
	b = binary.BigEndian.AppendUint16(b, uint16(len(topic)))
	b = append(b, topic...)
	b = binary.BigEndian.AppendUint16(b, id)
	b = append(b, 0) // property length
	return append(b, payload...)
}

// dialMQTT connects with MQTT 5 (over TLS if conf is set) and returns the
// connection after a successful CONNACK. receiveMax 0 leaves it out.
func dialMQTT(ctx context.Context, addr string, conf *tls.Config, clientID string, receiveMax uint16) (net.Conn, *bufio.Reader, *packets.Connack, error) {
	ctx, cancel := context.WithTimeout(ctx, benchDialTimeout)
	defer cancel()
	var conn net.Conn
	var err error
	if conf != nil {
		conn, err = (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", addr)
	} else {
		conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	props := &packets.Properties{}
	if receiveMax > 0 {
		props.ReceiveMaximum = &receiveMax
	}
	connect := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: clientID, CleanStart: true, Properties: props}
	if _, err := connect.WriteTo(conn); err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("send CONNECT: %w", err)
	}
	br := bufio.NewReaderSize(conn, 16<<10)
	cp, err := packets.ReadPacket(br)
	if err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("read CONNACK: %w", err)
	}
	ack, ok := cp.Content.(*packets.Connack)
	if !ok {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("got %s, want CONNACK", cp.PacketType())
	} else if ack.ReasonCode != packets.ConnackSuccess {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("CONNACK %#x (%s) %s", ack.ReasonCode, ack.Reason(), reasonString(ack.Properties))
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, br, ack, nil
}

// benchSubscriber receives and acknowledges what the devices publish
// through a plain broker, and counts it by topic.
type benchSubscriber struct {
	conn   net.Conn
	br     *bufio.Reader
	counts map[string]*atomic.Int64 // by topic; fixed before the reader starts
	total  atomic.Int64
	last   atomic.Int64  // last delivery, Unix ns
	dead   chan struct{} // closed when the reader stops
}

// subscribe connects the subscriber and subscribes to the devices' topics.
func (r *ingestRun) subscribe(ctx context.Context) (*benchSubscriber, error) {
	var conf *tls.Config
	if r.tls != nil {
		conf = r.tlsFor(r.devs[0]) // mosquitto: every device has the same certificate
	}
	conn, br, _, err := dialMQTT(ctx, r.addr, conf, "bench-sub-"+pylon.NewID()[:8], math.MaxUint16)
	if err != nil {
		return nil, fmt.Errorf("connect subscriber: %w", err)
	}
	s := &benchSubscriber{conn: conn, br: br, counts: make(map[string]*atomic.Int64), dead: make(chan struct{})}
	for _, d := range r.devs {
		s.counts[d.topic] = new(atomic.Int64)
	}
	sub := &packets.Subscribe{PacketID: 1, Properties: &packets.Properties{}, Subscriptions: []packets.SubOptions{{Topic: "devices/+/telemetry", QoS: 1}}}
	_ = conn.SetDeadline(time.Now().Add(benchDialTimeout))
	if _, err := sub.WriteTo(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	cp, err := packets.ReadPacket(br)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read SUBACK: %w", err)
	}
	if ack, ok := cp.Content.(*packets.Suback); !ok || len(ack.Reasons) != 1 || ack.Reasons[0] != 1 {
		conn.Close()
		return nil, fmt.Errorf("subscribe at QoS 1 refused: %s", cp)
	}
	_ = conn.SetDeadline(time.Time{})
	go s.read()
	return s, nil
}

// read counts PUBLISHes and acknowledges them, flushing the PUBACKs
// whenever nothing more is buffered.
func (s *benchSubscriber) read() {
	defer close(s.dead)
	bw := bufio.NewWriterSize(s.conn, 16<<10)
	for {
		cp, err := packets.ReadPacket(s.br)
		if err != nil {
			return // closed, or lost: wait reports what was not delivered
		}
		p, ok := cp.Content.(*packets.Publish)
		if !ok {
			continue
		}
		if n := s.counts[p.Topic]; n != nil {
			n.Add(1)
			s.total.Add(1)
			s.last.Store(time.Now().UnixNano())
		}
		if p.QoS > 0 {
			bw.Write([]byte{packets.PUBACK << 4, 2, byte(p.PacketID >> 8), byte(p.PacketID)})
		}
		if s.br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return
			}
		}
	}
}

// wait waits until every acknowledged message was delivered, or until no
// delivery came for benchDrain, and returns the time of the last delivery
// (Unix ns, 0 if none).
func (s *benchSubscriber) wait(ctx context.Context, devs []*benchDevice) int64 {
	var acked int64
	for _, d := range devs {
		acked += d.acked.Load()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	seen, since := s.total.Load(), time.Now()
	for s.total.Load() < acked && time.Since(since) < benchDrain {
		select {
		case <-tick.C:
		case <-s.dead:
			return s.last.Load()
		case <-ctx.Done():
			return s.last.Load()
		}
		if n := s.total.Load(); n != seen {
			seen, since = n, time.Now()
		}
	}
	return s.last.Load()
}

func (s *benchSubscriber) close() {
	_, _ = s.conn.Write([]byte{packets.DISCONNECT << 4, 0})
	s.conn.Close()
	<-s.dead
}

// mqttAddrOf completes the broker address a server announces: a leading
// ':' means the host of the server URL.
func mqttAddrOf(addr, serverURL string) (string, error) {
	if strings.HasPrefix(addr, ":") {
		u, err := url.Parse(serverURL)
		if err != nil {
			return "", fmt.Errorf("server URL: %w", err)
		}
		addr = net.JoinHostPort(u.Hostname(), addr[1:])
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("the server announces no valid broker address (%q): give --mqtt-addr", addr)
	}
	return addr, nil
}

// estEnroll enrolls key over EST simpleenroll with an enrollment token and
// returns the device certificate.
func estEnroll(ctx context.Context, hc *http.Client, base, token string, key crypto.Signer, cn string) (*x509.Certificate, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", base+"/.well-known/est/simpleenroll", bytes.NewReader(est.EncodeCSR(der)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("simpleenroll: status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	certs, err := est.DecodeCertsOnly(b)
	if err != nil {
		return nil, fmt.Errorf("simpleenroll: %w", err)
	} else if len(certs) == 0 {
		return nil, errors.New("simpleenroll: no certificate in the answer")
	}
	return certs[0], nil
}
