package main_test

// End-to-end tests of the Go device SDK (sdk/device), the examples and
// `pylon sim` against a real platform, with real faults: connections cut
// by a proxy, the server restarted, the device process killed, the outbox
// full and the certificate renewed under load. Each checks that no reading
// was lost and none stored twice.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	main "github.com/pylonhq/pylon/cmd/pylon"
	"github.com/pylonhq/pylon/envelope"
	sdk "github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

// sdkFleetToken creates a fleet enrollment token for uses devices.
func sdkFleetToken(t *testing.T, p *Platform, uses int) string {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	if code := p.Do("POST", "/api/v1/enrollment-tokens", p.AdminToken, map[string]any{"uses": uses, "labels": map[string]string{"kind": "sdk"}}, &tok); code != 201 {
		t.Fatalf("create fleet token: got status %d, want 201", code)
	}
	return tok.Token
}

// sdkEnroll enrolls a new SDK device into dir with a fleet token.
func sdkEnroll(t *testing.T, p *Platform, dir string) *sdk.Identity {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(p.Config.Data, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := sdk.Enroll(context.Background(), p.URL, sdkFleetToken(t, p, 1), caPEM, dir, sdk.WithCommonName("sdk-"+filepath.Base(dir)))
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	return id
}

// sdkOptions are test options: fast reconnection, no heartbeats, logs in
// the test output.
func sdkOptions(t *testing.T) sdk.Options {
	return sdk.Options{
		Heartbeat: -1, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 300 * time.Millisecond,
		AckTimeout: 5 * time.Second,
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// sdkReadings returns the device's stored readings of one name, oldest
// first, from the API.
func sdkReadings(t *testing.T, p *Platform, deviceID, name string) []*pylon.Reading {
	t.Helper()
	var list struct {
		Readings   []*pylon.Reading `json:"readings"`
		NextCursor string           `json:"next_cursor"`
	}
	path := "/api/v1/devices/" + deviceID + "/readings?limit=10000&order=asc&name=" + url.QueryEscape(name)
	if code := p.Do("GET", path, p.AdminToken, nil, &list); code != 200 {
		t.Fatalf("readings: got status %d, want 200", code)
	}
	if list.NextCursor != "" {
		t.Fatal("readings: more than one page")
	}
	var out []*pylon.Reading
	for _, r := range list.Readings {
		if r.Name == name {
			out = append(out, r)
		}
	}
	return out
}

// counter is reading i of a test: its value identifies it.
func counter(i int) senml.Record {
	return senml.Record{Name: "counter", Unit: "count", Value: sdk.Float(float64(i))}
}

// checkCounters fails unless the device stored exactly the counter values
// in want, each once.
func checkCounters(t *testing.T, p *Platform, deviceID string, want []int) {
	t.Helper()
	seen := map[int]int{}
	for _, r := range sdkReadings(t, p, deviceID, "counter") {
		if r.Value == nil {
			t.Fatalf("counter reading without a value: %+v", r)
		}
		seen[int(*r.Value)]++
	}
	lost, twice := 0, 0
	for _, v := range want {
		switch seen[v] {
		case 0:
			lost++
		case 1:
		default:
			twice++
		}
		delete(seen, v)
	}
	if lost > 0 || twice > 0 || len(seen) > 0 {
		t.Fatalf("of %d readings: %d lost, %d stored more than once, %d never published", len(want), lost, twice, len(seen))
	}
	t.Logf("all %d readings stored exactly once", len(want))
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func flush(t *testing.T, c *sdk.Client, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatalf("flush: %v (stats %+v)", err, c.Stats())
	}
}

func TestSDK_EnrollPublishRefuseReport(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	dir := filepath.Join(t.TempDir(), "dev")
	id := sdkEnroll(t, p, dir)

	var mu sync.Mutex
	var reports []sdk.PlatformError
	opts := sdkOptions(t)
	opts.Firmware = "1.2.3"
	opts.Heartbeat = time.Hour // one at start
	opts.Health = func() sdk.Health { return sdk.Health{Battery: sdk.Float(99), RSSI: sdk.Float(-60)} }
	opts.OnError = func(e sdk.PlatformError) {
		mu.Lock()
		reports = append(reports, e)
		mu.Unlock()
	}
	// No MQTTAddr: the broker address comes from GET /api/v1/info.
	c, err := sdk.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 20 {
		if err := c.Publish(ctx, counter(i)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if err := c.ReportError(ctx, "sensor-fault", "I2C bus timeout on the humidity sensor"); err != nil {
		t.Fatal(err)
	}

	// A reading the platform refuses for a reason the device cannot check:
	// it is older than the platform keeps (30 days).
	old := float64(time.Now().Add(-40 * 24 * time.Hour).Unix())
	err = c.Publish(ctx, senml.Record{Name: "counter", Unit: "count", Value: sdk.Float(-1), Time: old})
	var pe *sdk.PlatformError
	if !errors.As(err, &pe) || pe.Code != "invalid" || pe.ReasonCode != 0x99 || pe.Seq == 0 || !strings.Contains(pe.Reason, "in the past") {
		t.Fatalf("publish an old reading: got %v, want a PlatformError 0x99 invalid", err)
	}
	rejected, _ := os.ReadDir(filepath.Join(dir, "outbox", "rejected"))
	if len(rejected) != 1 {
		t.Fatalf("outbox/rejected: got %d files, want 1", len(rejected))
	}
	waitFor(t, "the refusal reported once", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reports) == 1 && reports[0].Seq == pe.Seq
	})

	flush(t, c, 10*time.Second)
	checkCounters(t, p, id.DeviceID, seq(20))
	if rs := sdkReadings(t, p, id.DeviceID, "sys/error/sensor-fault"); len(rs) != 1 || *rs[0].StringValue != "I2C bus timeout on the humidity sensor" {
		t.Fatalf("reported error: got %+v", rs)
	}
	for name, unit := range map[string]string{"sys/uptime": "s", "sys/firmware": "", "sys/battery": "%EL", "sys/rssi": "dB"} {
		if rs := sdkReadings(t, p, id.DeviceID, name); len(rs) != 1 || rs[0].Unit != unit {
			t.Errorf("heartbeat %s: got %+v, want one reading in %q", name, rs, unit)
		}
	}
	s := c.Stats()
	if s.Acked != 22 || s.Refused != 1 || s.Queued != 0 || !s.Connected {
		t.Fatalf("stats: got %+v, want 22 acknowledged, 1 refused", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 1 {
		t.Fatalf("reports: got %+v, want the one refusal once", reports)
	}
}

// tcpProxy forwards TCP connections to a target; the test can cut every
// connection at once, or refuse new ones.
type tcpProxy struct {
	l      net.Listener
	target string
	down   atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]bool
	cuts  int
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{l: l, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() {
		l.Close()
		p.cut()
	})
	go p.serve()
	return p
}

func (p *tcpProxy) Addr() string { return p.l.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		in, err := p.l.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in], p.conns[out] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(in, out)
		go pipe(out, in)
	}
}

// cut closes every live connection and returns how many there were.
func (p *tcpProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns) / 2
	for c := range p.conns {
		c.Close()
	}
	if n > 0 {
		p.cuts++
	}
	return n
}

// TestSDK_ConnectionCutMidStream cuts every connection between device and
// broker several times while 1,000 messages are published.
func TestSDK_ConnectionCutMidStream(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	dir := filepath.Join(t.TempDir(), "dev")
	id := sdkEnroll(t, p, dir)
	proxy := newTCPProxy(t, p.Broker.Addr().String())
	opts := sdkOptions(t)
	opts.MQTTAddr, opts.ServerName, opts.NoWait = proxy.Addr(), "127.0.0.1", true
	c, err := sdk.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const n = 1000
	cutsDone := make(chan int)
	go func() {
		cuts := 0
		deadline := time.Now().Add(20 * time.Second)
		for cuts < 6 && time.Now().Before(deadline) {
			// Cut once some messages went through on this connection.
			acked := c.Stats().Acked
			for c.Stats().Acked < acked+uint64(n/10) && time.Now().Before(deadline) && c.Stats().Acked < n-50 {
				time.Sleep(5 * time.Millisecond)
			}
			if proxy.cut() > 0 {
				cuts++
			}
			if c.Stats().Acked >= n-50 {
				break
			}
		}
		cutsDone <- cuts
	}()
	for i := range n {
		if err := c.Publish(context.Background(), counter(i)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if i%50 == 49 {
			time.Sleep(20 * time.Millisecond) // a stream, not a burst
		}
	}
	cuts := <-cutsDone
	flush(t, c, 30*time.Second)
	s := c.Stats()
	t.Logf("%d cuts, %d connections, %d PUBLISHes for %d messages", cuts, s.Connects, s.Sent, n)
	if cuts < 3 {
		t.Fatalf("only %d cuts happened, want at least 3", cuts)
	}
	checkCounters(t, p, id.DeviceID, seq(n))
}

// sdkRunMain starts a platform with its data in dir after config changes.
func sdkRunMain(t *testing.T, dir string, configure func(*main.Config)) *Platform {
	t.Helper()
	m := main.NewMain()
	m.Config.Data = dir
	m.Config.APIAddr = "127.0.0.1:0"
	m.Config.MQTTAddr = "127.0.0.1:0"
	if configure != nil {
		configure(&m.Config)
	}
	m.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError}))
	m.Stdout = io.Discard
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return &Platform{Main: m, t: t, URL: "https://" + m.HTTP.ListenAddr().String(), Client: MustRunMainClient(t, dir)}
}

// MustRunMainClient returns an HTTP client trusting the CA in dir.
func MustRunMainClient(t *testing.T, dir string) *http.Client {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// publishPaced publishes counters from..to-1 in a goroutine, a few at a
// time, and returns a channel closed when it is done.
func publishPaced(t *testing.T, c *sdk.Client, from, to int) chan error {
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for i := from; i < to; i++ {
			if err := c.Publish(context.Background(), counter(i)); err != nil {
				done <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
			if i%20 == 19 {
				time.Sleep(10 * time.Millisecond) // a stream, not a burst
			}
		}
	}()
	return done
}

func waitStat(t *testing.T, c *sdk.Client, what string, within time.Duration, cond func(sdk.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond(c.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, c.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSDK_ServerRestartMidStream stops the platform while a device
// publishes and starts it again on the same data and ports.
func TestSDK_ServerRestartMidStream(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	api, mqtt := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ports := func(c *main.Config) { c.APIAddr, c.MQTTAddr = api, mqtt }
	p := sdkRunMain(t, data, ports)
	dir := filepath.Join(t.TempDir(), "dev")
	id := sdkEnroll(t, p, dir)
	opts := sdkOptions(t)
	opts.NoWait = true
	c, err := sdk.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const n = 600
	done := publishPaced(t, c, 0, n)
	waitStat(t, c, "150 acknowledged", 20*time.Second, func(s sdk.Stats) bool { return s.Acked >= 150 })
	if err := p.Close(); err != nil {
		t.Fatalf("stop the platform: %v", err)
	}
	stopped := c.Stats().Acked
	waitStat(t, c, "messages queued while the server is down", 20*time.Second, func(s sdk.Stats) bool { return s.Enqueued >= stopped+100 })
	p2 := sdkRunMain(t, data, ports)
	p2.AdminToken = p.AdminToken
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	flush(t, c, 30*time.Second)
	s := c.Stats()
	t.Logf("acknowledged %d before the stop; %d connections, %d PUBLISHes for %d messages", stopped, s.Connects, s.Sent, n)
	if s.Connects < 2 {
		t.Fatalf("connections: got %d, want a reconnection", s.Connects)
	}
	checkCounters(t, p2, id.DeviceID, seq(n))
}

// TestSDK_QueueFull fills the outbox while the broker is unreachable:
// Publish refuses beyond the bound, and everything it accepted arrives.
func TestSDK_QueueFull(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	dir := filepath.Join(t.TempDir(), "dev")
	id := sdkEnroll(t, p, dir)
	proxy := newTCPProxy(t, p.Broker.Addr().String())
	proxy.down.Store(true)
	opts := sdkOptions(t)
	opts.MQTTAddr, opts.ServerName, opts.NoWait, opts.MaxQueued = proxy.Addr(), "127.0.0.1", true, 50
	c, err := sdk.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var accepted []int
	full := 0
	for i := range 80 {
		switch err := c.Publish(context.Background(), counter(i)); {
		case err == nil:
			accepted = append(accepted, i)
		case errors.Is(err, sdk.ErrQueueFull):
			full++
		default:
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if len(accepted) != 50 || full != 30 || accepted[49] != 49 {
		t.Fatalf("offline: %d accepted (last %d), %d refused as full; want the first 50, then ErrQueueFull", len(accepted), accepted[len(accepted)-1], full)
	}
	proxy.down.Store(false)
	flush(t, c, 20*time.Second)
	// Room again.
	for i := 100; i < 110; i++ {
		if err := c.Publish(context.Background(), counter(i)); err != nil {
			t.Fatalf("publish after draining: %v", err)
		}
		accepted = append(accepted, i)
	}
	flush(t, c, 10*time.Second)
	checkCounters(t, p, id.DeviceID, accepted)
}

// TestSDK_RenewalUnderLoad gives devices one-hour certificates and renews
// them every couple of seconds while publishing: each renewal makes a new
// key and reconnects; queued messages are re-sealed, none lost.
func TestSDK_RenewalUnderLoad(t *testing.T) {
	p := sdkRunMain(t, filepath.Join(t.TempDir(), "data"), func(c *main.Config) { c.CertLifetime = main.Duration(time.Hour) })
	p.AdminToken = p.Main.AdminToken
	dir := filepath.Join(t.TempDir(), "dev")
	id := sdkEnroll(t, p, dir)
	opts := sdkOptions(t)
	opts.NoWait = true
	opts.RenewAt = 0.001 // due at once; renewals then come every lifetime/2000 ≈ 1.8 s
	c, err := sdk.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := c.Identity().Certificate

	const n = 800
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			if err := c.Publish(context.Background(), counter(i)); err != nil {
				done <- err
				return
			}
			if i%20 == 19 {
				time.Sleep(50 * time.Millisecond) // 800 messages over about 2 renewals
			}
		}
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitStat(t, c, "2 renewals", 20*time.Second, func(s sdk.Stats) bool { return s.Renewals >= 2 })
	flush(t, c, 20*time.Second)
	s := c.Stats()
	last := c.Identity().Certificate
	t.Logf("%d renewals, %d connections, %d PUBLISHes for %d messages", s.Renewals, s.Connects, s.Sent, n)
	if last.SerialNumber.Cmp(first.SerialNumber) == 0 || s.Refused != 0 {
		t.Fatalf("after renewals: serial unchanged or %d messages refused", s.Refused)
	}
	checkCounters(t, p, id.DeviceID, seq(n))
	var certs struct {
		Certificates []struct {
			Serial string `json:"serial"`
			Status string `json:"status"`
		} `json:"certificates"`
	}
	p.Do("GET", "/api/v1/devices/"+id.DeviceID+"/certificates", p.AdminToken, nil, &certs)
	statuses := map[string]int{}
	for _, ct := range certs.Certificates {
		statuses[ct.Status]++
	}
	if statuses["superseded"] < 2 {
		t.Fatalf("certificates: got %v, want the old ones superseded", statuses)
	}
}

// buildExample builds examples/go once per test binary.
var buildExample = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "pylon-example-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "example-device")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/pylonhq/pylon/examples/go").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build examples/go: %v\n%s", err, out)
	}
	return bin, nil
})

// queuedReadingTimes opens the messages in a device's outbox and returns
// the times (Unix ms) of their readings named name.
func queuedReadingTimes(t *testing.T, dir, name string) []int64 {
	t.Helper()
	id, err := sdk.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "outbox", "*.msg"))
	var times []int64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m, err := envelope.Open(b[36:], id.Certificate.PublicKey) // after the outbox header
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		rs, err := senml.Decode(id.DeviceID, m.ContentType, m.Payload, time.Now(), senml.Limits{})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, r := range rs {
			if r.Name == name {
				times = append(times, r.Time.UnixMilli())
			}
		}
	}
	return times
}

// TestSDK_DeviceKilledAndRestarted runs examples/go as a process, kills it
// with SIGKILL mid-stream and starts it again on the same directory:
// everything it had queued arrives, once.
func TestSDK_DeviceKilledAndRestarted(t *testing.T) {
	bin, err := buildExample()
	if err != nil {
		t.Fatal(err)
	}
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	proxy := newTCPProxy(t, p.Broker.Addr().String())
	dir := filepath.Join(t.TempDir(), "dev")
	args := []string{"-server", p.URL, "-ca", filepath.Join(p.Config.Data, "ca.crt"), "-token", sdkFleetToken(t, p, 1),
		"-dir", dir, "-name", "killed-1", "-mqtt-addr", proxy.Addr()}

	out := &syncBuffer{}
	cmd := exec.Command(bin, append(args, "-every", "3ms")...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitQueued := func(n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for strings.Count(out.String(), "queued temperature") < n {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("example did not queue %d readings:\n%s", n, out)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Online for a while, then the network goes: readings pile up.
	waitQueued(150)
	proxy.down.Store(true)
	proxy.cut()
	waitQueued(300)
	cmd.Process.Kill() // SIGKILL: no chance to flush or close anything
	cmd.Wait()
	printed := strings.Count(out.String(), "queued temperature")
	pending := queuedReadingTimes(t, dir, "temperature")
	idb, _ := os.ReadFile(filepath.Join(dir, "device.id"))
	deviceID := strings.TrimSpace(string(idb))
	t.Logf("killed after %d readings queued; %d still in the outbox", printed, len(pending))

	if len(pending) < 100 {
		t.Fatalf("only %d readings in the outbox at the kill, want the offline ones", len(pending))
	}
	// Restart, online again: one more reading, then wait until everything
	// is delivered.
	proxy.down.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	restart, err := exec.CommandContext(ctx, bin, append(args, "-n", "1", "-every", "1ms")...).CombinedOutput()
	if err != nil || !strings.Contains(string(restart), "all readings delivered") {
		t.Fatalf("restarted example: %v\n%s", err, restart)
	}
	stored := map[int64]int{}
	for _, r := range sdkReadings(t, p, deviceID, "temperature") {
		stored[r.Time.UnixMilli()]++
	}
	for ms, n := range stored {
		if n > 1 {
			t.Errorf("reading of %d stored %d times", ms, n)
		}
	}
	for _, ms := range pending {
		if stored[ms] != 1 {
			t.Errorf("queued reading of %d: stored %d times, want once", ms, stored[ms])
		}
	}
	if len(stored) < printed+1 {
		t.Errorf("stored %d readings, want at least the %d queued", len(stored), printed+1)
	}
	if _, err := os.Stat(filepath.Join(dir, "outbox", "00000000000000000001.msg")); !os.IsNotExist(err) {
		t.Error("outbox not empty after delivery")
	}
}

// debianPython returns a Python 3 that has paho-mqtt, cryptography and
// cbor2 (Debian's python3-paho-mqtt, python3-cryptography, python3-cbor2).
func debianPython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import paho.mqtt.client, cryptography, cbor2").Run() == nil {
			return py
		}
	}
	t.Fatal("no python3 with paho-mqtt, cryptography and cbor2: run scripts/test-deps.sh")
	return ""
}

// TestSDK_PythonExample runs examples/python/device.py: enrollment, CBOR
// and JSON messages, sequence numbers that continue across runs, and a
// refusal printed from the errors topic.
func TestSDK_PythonExample(t *testing.T) {
	py := debianPython(t)
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	dir := filepath.Join(t.TempDir(), "dev-py")
	token := sdkFleetToken(t, p, 1)
	run := func(extra ...string) string {
		t.Helper()
		args := append([]string{mustAbs("../../examples/python/device.py"), "--server", p.URL, "--ca", filepath.Join(p.Config.Data, "ca.crt"),
			"--token", token, "--dir", dir, "--name", "py-1", "--every", "0", "--linger", "0"}, extra...)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, py, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("device.py %v: %v\n%s", extra, err, out)
		}
		return string(out)
	}
	out := run("--count", "3")
	if !strings.Contains(out, "enrolled as device") || strings.Count(out, "published seq") != 3 {
		t.Fatalf("first run: %s", out)
	}
	out2 := run("--count", "2", "--format", "json")
	if strings.Contains(out2, "enrolled") || !strings.Contains(out2, "published seq 101") {
		t.Fatalf("second run: want the identity kept and seq continuing above the reserved block:\n%s", out2)
	}
	// A refusal: the unit is not SenML. The report arrives on the errors
	// topic of the same connection; --linger waits for it.
	out3 := run("--count", "1", "--unit", "furlong", "--linger", "3")
	if !strings.Contains(out3, "platform error:") || !strings.Contains(out3, `"code":"invalid"`) || !strings.Contains(out3, "furlong") {
		t.Fatalf("refused reading: want the platform error printed:\n%s", out3)
	}
	idb, _ := os.ReadFile(filepath.Join(dir, "device.id"))
	if rs := sdkReadings(t, p, strings.TrimSpace(string(idb)), "temperature"); len(rs) != 5 {
		t.Fatalf("stored: got %d temperature readings, want 5", len(rs))
	}
	if fi, err := os.Stat(filepath.Join(dir, "device.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("device.key: got %v %v, want mode 600", fi, err)
	}
}

// TestSDK_ShellExample runs examples/shell/device.sh against the binary.
func TestSDK_ShellExample(t *testing.T) {
	requireTools(t, "curl", "openssl", "mosquitto_pub", "base64", "awk")
	s := startBinary(t, filepath.Join(t.TempDir(), "d"))
	waitHealthy(t, s)
	var tok struct{ Token string }
	mustJSON(t, s.sh(t, `$PYLON tokens create --uses 1 -o json`), &tok)
	out := s.sh(t, `COUNT=3 EVERY=0 MQTT_HOST=localhost "$EXAMPLES/shell/device.sh" "$API" "$PYLON_CA" dev-sh '`+tok.Token+`' shell-7`)
	if !strings.Contains(out, "enrolled device") || strings.Count(out, "published seq") != 3 {
		t.Fatalf("device.sh: %s", out)
	}
	// A refusal the device cannot foresee: a sequence number far below
	// those stored (a replay).
	s.sh(t, `echo 5000 > dev-sh/seq`)
	s.sh(t, `COUNT=1 EVERY=0 MQTT_HOST=localhost "$EXAMPLES/shell/device.sh" "$API" "$PYLON_CA" dev-sh`)
	s.sh(t, `echo 10 > dev-sh/seq`)
	out = s.sh(t, `COUNT=1 EVERY=0 MQTT_HOST=localhost "$EXAMPLES/shell/device.sh" "$API" "$PYLON_CA" dev-sh`)
	if !strings.Contains(out, "platform error (seq 11)") || !strings.Contains(out, "replay") {
		t.Fatalf("replayed reading: want the platform's refusal printed:\n%s", out)
	}
	id := strings.TrimSpace(s.sh(t, `cat dev-sh/device.id`))
	if got := s.sh(t, `$PYLON readings list `+id+` --name temperature -o json | grep -c '"name"' || true`); strings.TrimSpace(got) != "4" {
		t.Fatalf("stored readings: got %s, want 4", got)
	}
}

// TestSDK_Sim runs `pylon sim` against the binary twice: the second run
// reuses the identities kept in --dir.
func TestSDK_Sim(t *testing.T) {
	s := startBinary(t, filepath.Join(t.TempDir(), "d"))
	waitHealthy(t, s)
	var tok struct{ Token string }
	mustJSON(t, s.sh(t, `$PYLON tokens create --uses 3 -o json`), &tok)
	sim := `$PYLON sim --server "$API" --ca "$PYLON_CA" --devices 3 --rate 20 --duration 2s --dir sim --heartbeat 1s -o json 2>/dev/null`
	var sum struct {
		Devices                             int
		Sent, Acknowledged, Refused, Failed int
		Queued                              int
		MsgsPerSec                          float64 `json:"msgs_per_sec"`
	}
	mustJSON(t, s.sh(t, `PYLON_ENROLL_TOKEN='`+tok.Token+`' `+sim), &sum)
	t.Logf("sim: %+v", sum)
	if sum.Devices != 3 || sum.Sent < 60 || sum.Acknowledged < sum.Sent || sum.Refused != 0 || sum.Failed != 0 || sum.Queued != 0 || sum.MsgsPerSec <= 0 {
		t.Fatalf("first run: got %+v, want ~120 messages and heartbeats sent, all acknowledged", sum)
	}
	// The token is used up: a rerun must reuse the three identities.
	mustJSON(t, s.sh(t, sim), &sum)
	if sum.Sent < 60 || sum.Acknowledged < sum.Sent || sum.Queued != 0 {
		t.Fatalf("second run: got %+v", sum)
	}
	var list struct {
		Devices []struct{ Name string }
	}
	mustJSON(t, s.sh(t, `$PYLON devices list -o json`), &list)
	if len(list.Devices) != 3 || !strings.HasPrefix(list.Devices[0].Name, "sim-") {
		t.Fatalf("devices: got %+v, want the 3 simulated ones", list.Devices)
	}
}
