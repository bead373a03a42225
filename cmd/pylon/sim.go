package main

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

// Limits of `pylon sim`.
const (
	maxSimDevices    = 10_000
	maxSimRate       = 1000 // messages per second per device
	simEnrollWorkers = 8
)

const simUsage = `usage: pylon sim [--server URL] [--ca FILE] --enroll-token T [--devices N] [--rate R] [--duration D]
                 [--mqtt-addr HOST:PORT] [--dir DIR] [--batch 0s] [--key p256|ed25519] [--heartbeat 60s] [-o table|json]

Simulates a fleet with the Go device SDK: enrolls N devices with one fleet
enrollment token (names sim-<fleet>-<i>; identities are kept under DIR, so a
rerun reuses them and their queued messages), then each device publishes R
signed messages a second (temperature in Cel random-walking around 21,
relative humidity in %RH, battery in %EL slowly draining) and heartbeats,
for D. At the end it waits for the queues to drain (at most --drain) and
prints what was sent, acknowledged, refused, failed and left queued.

The enrollment token may also come from $PYLON_ENROLL_TOKEN, the server and
CA from $PYLON_SERVER and $PYLON_CA; next to a local server they default to
https://localhost:8443 and ./pylon-data/ca.crt, as for the admin commands.

Flags:
`

// simDevice is one simulated device.
type simDevice struct {
	index  int
	dir    string
	client *device.Client
	failed atomic.Uint64 // Publish errors

	mu             sync.Mutex // the publisher and the heartbeat read the state
	temp, rh, batt float64
}

// simSummary is what `pylon sim` reports at the end.
type simSummary struct {
	Devices      int     `json:"devices"`
	Sent         uint64  `json:"sent"`         // messages the SDK accepted (queued for sending)
	Acknowledged uint64  `json:"acknowledged"` // stored by the platform (with what an earlier run left queued)
	Refused      uint64  `json:"refused"`      // refused by the platform
	Failed       uint64  `json:"failed"`       // Publish errors (e.g. outbox full)
	Queued       int     `json:"queued"`       // left in the outboxes at the end
	Seconds      float64 `json:"seconds"`
	MsgsPerSec   float64 `json:"msgs_per_sec"` // acknowledged per second
}

// runSim implements `pylon sim`.
func (e *cliEnv) runSim(ctx context.Context, args []string) error {
	fs := e.flagSet("sim", simUsage)
	ef := addEnrollFlags(fs, "CA certificate `file` the devices pin", "fleet enrollment `token`")
	server, caFile, token := ef.server, ef.ca, ef.token
	n := fs.Int("devices", 10, "number of devices")
	rate := fs.Float64("rate", 1, "messages per second per device")
	duration := fs.Duration("duration", time.Minute, "how long to publish (0: until interrupted)")
	drain := fs.Duration("drain", 30*time.Second, "how long to wait at the end for queued messages")
	mqttAddr := fs.String("mqtt-addr", "", "broker `host:port` (default: asked from the server)")
	dir := fs.String("dir", "pylon-sim", "`directory` for the device identities and outboxes")
	batch := fs.Duration("batch", 0, "batch window: readings within it go in one message (0: none)")
	keyType := fs.String("key", "p256", "device key type: p256 or ed25519")
	heartbeat := fs.Duration("heartbeat", device.DefaultHeartbeat, "heartbeat interval (0: none)")
	compress := fs.String("compress", "", "compression: deflate or zstd (default none)")
	output := fs.String("o", "table", "output `format`: table or json")
	logLevel := fs.String("log-level", "error", "SDK log level: debug, info, warn or error")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	ef.resolve(e)
	var level slog.Level
	switch {
	case len(pos) > 0:
		return usageErrorf("sim: unexpected argument %q", pos[0])
	case *n < 1 || *n > maxSimDevices:
		return usageErrorf("sim: --devices must be 1 to %d", maxSimDevices)
	case !(*rate > 0 && *rate <= maxSimRate):
		return usageErrorf("sim: --rate must be above 0 and at most %d", maxSimRate)
	case *duration < 0 || *drain < 0 || *batch < 0 || *heartbeat < 0:
		return usageErrorf("sim: durations must not be negative")
	case *keyType != string(device.KeyP256) && *keyType != string(device.KeyEd25519):
		return usageErrorf("sim: --key must be p256 or ed25519")
	case *output != "table" && *output != "json":
		return usageErrorf("sim: -o must be table or json")
	case *compress != envelope.EncodingNone && *compress != envelope.EncodingDeflate && *compress != envelope.EncodingZstd:
		return usageErrorf("sim: --compress must be deflate or zstd")
	case level.UnmarshalText([]byte(*logLevel)) != nil:
		return usageErrorf("sim: --log-level must be debug, info, warn or error")
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("read CA certificate: %w", err)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fmt.Errorf("sim directory: %w", err)
	}
	fleet, err := simFleetID(*dir)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))

	// Enroll the devices that have no identity yet, a few at a time.
	devs := make([]*simDevice, *n)
	var enrolled atomic.Int64
	jobs := make(chan int)
	errs := make(chan error, *n)
	var wg sync.WaitGroup
	for range min(simEnrollWorkers, *n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				d := &simDevice{index: i, dir: filepath.Join(*dir, fmt.Sprintf("dev-%05d", i)), temp: 21 + rand.NormFloat64(), rh: 40 + 5*rand.Float64(), batt: 80 + 20*rand.Float64()}
				devs[i] = d
				if _, err := device.LoadIdentity(d.dir); err == nil {
					continue
				} else if !errors.Is(err, device.ErrNotEnrolled) {
					errs <- err
					continue
				}
				if *token == "" {
					errs <- usageErrorf("sim: device %d has no identity: --enroll-token (or $PYLON_ENROLL_TOKEN) is required", i)
					continue
				}
				_, err := device.Enroll(ctx, *server, *token, caPEM, d.dir,
					device.WithCommonName(fmt.Sprintf("sim-%s-%d", fleet, i)), device.WithKeyType(device.KeyType(*keyType)))
				if err != nil {
					errs <- fmt.Errorf("enroll device %d: %w", i, err)
					continue
				}
				enrolled.Add(1)
			}
		}()
	}
	for i := range devs {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if k := enrolled.Load(); k > 0 {
		fmt.Fprintf(e.stderr, "enrolled %d devices (fleet %s)\n", k, fleet)
	}

	// Connect and publish.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var refused atomic.Uint64
	for _, d := range devs {
		opts := device.Options{
			MQTTAddr: *mqttAddr, NoWait: true, BatchWindow: *batch, Compression: *compress,
			Heartbeat: *heartbeat, Firmware: "pylon-sim/" + pylon.Version,
			Health: d.health, Logger: log.With("sim_device", d.index),
			ReconnectMin: 500 * time.Millisecond, ReconnectMax: 30 * time.Second,
			OnError: func(device.PlatformError) { refused.Add(1) },
		}
		if *heartbeat == 0 {
			opts.Heartbeat = -1
		}
		c, err := device.Connect(runCtx, d.dir, opts)
		if err != nil {
			stopped, stop := context.WithCancel(ctx)
			stop() // no draining: what is queued stays for the next run
			shutdownSim(stopped, devs)
			return fmt.Errorf("device %d: %w", d.index, err)
		}
		d.client = c
	}
	start := time.Now()
	pubCtx := runCtx
	if *duration > 0 {
		var cancelPub context.CancelFunc
		pubCtx, cancelPub = context.WithTimeout(runCtx, *duration)
		defer cancelPub()
	}
	interval := time.Duration(float64(time.Second) / *rate)
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.publishLoop(pubCtx, interval)
		}()
	}
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	for done := false; !done; {
		select {
		case <-pubCtx.Done():
			done = true
		case <-progress.C:
			s := summarize(devs, time.Since(start))
			fmt.Fprintf(e.stderr, "sim: %.0fs sent %d acknowledged %d queued %d\n", s.Seconds, s.Sent, s.Acknowledged, s.Queued)
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	// Stop the devices: heartbeats end, and each waits (at most --drain)
	// for the platform to acknowledge what it has queued.
	drainCtx, cancelDrain := context.WithTimeout(ctx, *drain)
	if ctx.Err() != nil || *drain == 0 {
		cancelDrain()
	}
	shutdownSim(drainCtx, devs)
	cancelDrain()
	return e.printSim(*output, summarize(devs, elapsed))
}

// flagSet returns a flag set with a usage text.
func (e *cliEnv) flagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet("pylon "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return fs
}

// simFleetID returns the fleet's random name part, made on the first run
// and kept in dir.
func simFleetID(dir string) (string, error) {
	path := filepath.Join(dir, "fleet.id")
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" && len(id) <= 32 {
			return id, nil
		}
	}
	var b [3]byte
	if _, err := crand.Read(b[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("sim directory: %w", err)
	}
	return id, nil
}

// publishLoop publishes one message per interval until ctx ends.
func (d *simDevice) publishLoop(ctx context.Context, interval time.Duration) {
	// Start at a random point of the first interval, so that devices do
	// not publish in lockstep.
	select {
	case <-time.After(time.Duration(rand.Int64N(int64(interval) + 1))):
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := d.client.Publish(ctx, d.readings()...); err != nil && ctx.Err() == nil {
			d.failed.Add(1)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// readings returns the next simulated readings: temperature random-walking
// back towards 21 °C, humidity towards 45 %RH, battery draining.
func (d *simDevice) readings() []senml.Record {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.temp += 0.1*(21-d.temp) + 0.2*rand.NormFloat64()
	d.rh = math.Min(100, math.Max(0, d.rh+0.1*(45-d.rh)+0.5*rand.NormFloat64()))
	d.batt = math.Max(0, d.batt-0.001)
	return []senml.Record{
		{Name: "temperature", Unit: "Cel", Value: device.Float(math.Round(d.temp*100) / 100)},
		{Name: "humidity", Unit: "%RH", Value: device.Float(math.Round(d.rh*10) / 10)},
		{Name: "battery", Unit: "%EL", Value: device.Float(math.Round(d.batt*100) / 100)},
	}
}

// health reports the battery and a noisy signal strength.
func (d *simDevice) health() device.Health {
	d.mu.Lock()
	batt := d.batt
	d.mu.Unlock()
	return device.Health{
		Battery:    device.Float(math.Round(batt*100) / 100),
		RSSI:       device.Float(math.Round(-65 + 5*rand.NormFloat64())),
		FreeMemory: device.Float(float64(48<<10 + rand.IntN(8<<10))),
	}
}

func summarize(devs []*simDevice, elapsed time.Duration) simSummary {
	s := simSummary{Devices: len(devs), Seconds: math.Round(elapsed.Seconds()*10) / 10}
	for _, d := range devs {
		if d.client == nil {
			continue
		}
		st := d.client.Stats()
		s.Sent += st.Enqueued
		s.Acknowledged += st.Acked
		s.Refused += st.Refused
		s.Queued += st.Queued
		s.Failed += d.failed.Load()
	}
	if elapsed > 0 {
		s.MsgsPerSec = math.Round(float64(s.Acknowledged)/elapsed.Seconds()*10) / 10
	}
	return s
}

// shutdownSim shuts every device's client down, draining its outbox until
// ctx ends.
func shutdownSim(ctx context.Context, devs []*simDevice) {
	var wg sync.WaitGroup
	for _, d := range devs {
		if d != nil && d.client != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.client.Shutdown(ctx)
			}()
		}
	}
	wg.Wait()
}

func (e *cliEnv) printSim(output string, s simSummary) error {
	e.output = output
	return e.print(s, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "DEVICES\tSENT\tACKNOWLEDGED\tREFUSED\tFAILED\tQUEUED\tSECONDS\tMSGS/S")
		fmt.Fprintf(w, "%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\n", s.Devices, s.Sent, s.Acknowledged, s.Refused, s.Failed, s.Queued, s.Seconds, s.MsgsPerSec)
	})
}
