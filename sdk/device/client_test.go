package device_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

// enrolledDir enrolls with a fake EST server and returns the directory.
func enrolledDir(t *testing.T) string {
	t.Helper()
	ca := newFakeCA(t)
	srv := newFakeEST(t, ca)
	dir := filepath.Join(t.TempDir(), "dev")
	if _, err := device.Enroll(context.Background(), srv.URL, "good", ca.pem, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// outboxSeqs opens every queued message with the device's current
// certificate and returns their sequence numbers.
func outboxSeqs(t *testing.T, dir string) []uint64 {
	t.Helper()
	id, err := device.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "outbox"))
	var seqs []uint64
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".msg") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "outbox", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m, err := envelope.Open(b[36:], id.Certificate.PublicKey)
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		if n, _ := strconv.ParseUint(strings.TrimSuffix(e.Name(), ".msg"), 10, 64); n != m.Seq {
			t.Fatalf("%s holds seq %d", e.Name(), m.Seq)
		}
		seqs = append(seqs, m.Seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	return seqs
}

func temp(v float64) senml.Record {
	return senml.Record{Name: "temperature", Unit: "Cel", Value: device.Float(v)}
}

func TestClient_OfflineQueueBoundedAndDurable(t *testing.T) {
	dir := enrolledDir(t)
	opts := device.Options{MQTTAddr: closedAddr(t), NoWait: true, MaxQueued: 3, Heartbeat: -1, ReconnectMin: time.Hour}
	c, err := device.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.Publish(context.Background(), temp(float64(i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if err := c.Publish(context.Background(), temp(9)); !errors.Is(err, device.ErrQueueFull) {
		t.Fatalf("fourth publish: got %v, want ErrQueueFull", err)
	}
	if s := c.Stats(); s.Queued != 3 || s.Enqueued != 3 || s.Connected || s.LastSeq != 3 {
		t.Fatalf("stats: got %+v", s)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(context.Background(), temp(1)); !errors.Is(err, device.ErrClosed) {
		t.Fatalf("publish after close: got %v, want ErrClosed", err)
	}
	if got := outboxSeqs(t, dir); len(got) != 3 || got[0] != 1 || got[2] != 3 {
		t.Fatalf("outbox after close: got %v, want [1 2 3]", got)
	}

	// Restart: the queue is still there and the sequence continues above it.
	opts.MaxQueued = 10
	c2, err := device.Connect(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Publish(context.Background(), temp(4)); err != nil {
		t.Fatal(err)
	}
	got := outboxSeqs(t, dir)
	if len(got) != 4 || got[3] <= 3 {
		t.Fatalf("outbox after restart: got %v, want 4 seqs, the last above 3", got)
	}
}

func TestClient_PublishWaitsForAck(t *testing.T) {
	dir := enrolledDir(t)
	c, err := device.Connect(context.Background(), dir, device.Options{MQTTAddr: closedAddr(t), Heartbeat: -1, ReconnectMin: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Publish(ctx, temp(1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish offline: got %v, want the context's deadline", err)
	}
	if got := outboxSeqs(t, dir); len(got) != 1 {
		t.Fatalf("outbox: got %v, want the message kept", got)
	}
	if err := c.ReportError(context.Background(), "bad code!", "x"); pylon.ErrorCode(err) != pylon.EINVALID {
		t.Fatalf("bad error code: got %v, want EINVALID", err)
	}
	if err := c.Publish(context.Background(), senml.Record{Name: "t", Unit: "furlong", Value: device.Float(1)}); pylon.ErrorCode(err) != pylon.EINVALID {
		t.Fatalf("bad unit: got %v, want EINVALID", err)
	}
}

func TestClient_BatchWindowMakesOneMessage(t *testing.T) {
	dir := enrolledDir(t)
	c, err := device.Connect(context.Background(), dir, device.Options{MQTTAddr: closedAddr(t), NoWait: true, BatchWindow: 200 * time.Millisecond, Heartbeat: -1, ReconnectMin: time.Hour, Compression: envelope.EncodingDeflate})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Publish(context.Background(), temp(float64(i)))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seqs := outboxSeqs(t, dir)
	if len(seqs) != 1 {
		t.Fatalf("got %d messages, want 1 batch", len(seqs))
	}
	id, _ := device.LoadIdentity(dir)
	b, _ := os.ReadFile(filepath.Join(dir, "outbox", "00000000000000000001.msg"))
	m, err := envelope.Open(b[36:], id.Certificate.PublicKey)
	if err != nil || m.Encoding != envelope.EncodingDeflate {
		t.Fatalf("open batch: got %+v %v, want deflate", m, err)
	}
	rs, err := senml.Decode(id.DeviceID, m.ContentType, m.Payload, time.Now(), senml.Limits{})
	if err != nil || len(rs) != 20 {
		t.Fatalf("batch: got %d readings %v, want 20", len(rs), err)
	}
}

func TestClient_RenewRekeys(t *testing.T) {
	dir := enrolledDir(t)
	c, err := device.Connect(context.Background(), dir, device.Options{MQTTAddr: closedAddr(t), NoWait: true, Heartbeat: -1, ReconnectMin: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := c.Identity().Certificate
	if err := c.Publish(context.Background(), temp(1)); err != nil {
		t.Fatal(err)
	}
	if err := c.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := c.Identity().Certificate
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 || after.Subject.CommonName != testDeviceID {
		t.Fatalf("renewed certificate: got serial %v CN %q", after.SerialNumber, after.Subject.CommonName)
	}
	onDisk, err := device.LoadIdentity(dir)
	if err != nil || !onDisk.Certificate.Equal(after) {
		t.Fatalf("stored identity: got %v, want the renewed certificate", err)
	}
	keys, _ := os.ReadDir(filepath.Join(dir, "keys"))
	if len(keys) != 1 {
		t.Fatalf("keys/: got %d files, want the old public key", len(keys))
	}
	if s := c.Stats(); s.Renewals != 1 {
		t.Fatalf("renewals: got %d, want 1", s.Renewals)
	}
}

func TestConnect_NotEnrolled(t *testing.T) {
	_, err := device.Connect(context.Background(), t.TempDir(), device.Options{})
	if !errors.Is(err, device.ErrNotEnrolled) {
		t.Fatalf("got %v, want ErrNotEnrolled", err)
	}
}
