package sqlite_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sqlite"
	"github.com/pylonhq/pylon/storetest"
)

// createDevices creates n devices through the store and returns their IDs.
func createDevices(tb testing.TB, db *sqlite.DB, n int) []string {
	tb.Helper()
	devices := sqlite.NewDeviceService(db)
	ids := make([]string, n)
	for i := range ids {
		d := &pylon.Device{Name: fmt.Sprintf("device-%05d", i)}
		if err := devices.CreateDevice(context.Background(), d); err != nil {
			tb.Fatalf("create device: %v", err)
		}
		ids[i] = d.ID
	}
	return ids
}

// reading returns a numeric reading.
func reading(name string, t time.Time, v float64) pylon.Reading {
	return pylon.Reading{Name: name, Unit: "Cel", Time: t, Value: &v}
}

// mustWrite writes msgs and fails tb unless every status is want.
func mustWrite(tb testing.TB, ts pylon.TelemetryService, want pylon.WriteStatus, msgs ...*pylon.TelemetryMessage) {
	tb.Helper()
	st, err := ts.WriteMessages(context.Background(), msgs)
	if err != nil {
		tb.Fatalf("write: %v", err)
	}
	for i, s := range st {
		if s != want {
			tb.Fatalf("message %d: got status %d, want %d", i, s, want)
		}
	}
}

func TestTelemetryQuarantineCap(t *testing.T) {
	path := tempPath(t)
	db, _ := MustOpenDB(t, path)
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	ctx := context.Background()
	const extra = 5
	for i := range pylon.MaxQuarantine + extra {
		if err := ts.QuarantineMessage(ctx, &pylon.QuarantinedMessage{DeviceID: dev, Reason: fmt.Sprint(i)}); err != nil {
			t.Fatalf("quarantine %d: %v", i, err)
		}
	}
	var n int
	var oldest string
	if err := openRaw(t, path).QueryRow(`SELECT count(*), (SELECT reason FROM quarantine ORDER BY id LIMIT 1) FROM quarantine`).Scan(&n, &oldest); err != nil {
		t.Fatal(err)
	}
	if n != pylon.MaxQuarantine || oldest != fmt.Sprint(extra) {
		t.Fatalf("got %d messages, oldest %q; want %d, oldest %q", n, oldest, pylon.MaxQuarantine, fmt.Sprint(extra))
	}
	got, err := ts.FindQuarantine(ctx, "", 5000)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if len(got) != 1000 || got[0].Reason != fmt.Sprint(pylon.MaxQuarantine+extra-1) {
		t.Fatalf("got %d messages, newest %q; want 1000 (the maximum), newest first", len(got), got[0].Reason)
	}
}

func TestTelemetryQuarantineReason(t *testing.T) {
	db, _ := MustOpenDB(t, sqlite.MemoryDSN)
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	tests := []struct {
		name   string
		reason string
		want   string
	}{
		{"short", "bad seq", "bad seq"},
		{"at the limit", strings.Repeat("a", 1024), strings.Repeat("a", 1024)},
		{"cut at a byte", strings.Repeat("a", 1030), strings.Repeat("a", 1024)},
		{"not inside a rune", strings.Repeat("a", 1023) + "é", strings.Repeat("a", 1023)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &pylon.QuarantinedMessage{DeviceID: dev, Reason: tt.reason}
			if err := ts.QuarantineMessage(context.Background(), m); err != nil {
				t.Fatalf("quarantine: %v", err)
			}
			got, err := ts.FindQuarantine(context.Background(), dev, 1)
			if err != nil || len(got) != 1 {
				t.Fatalf("find: %v", err)
			}
			if got[0].Reason != tt.want || m.Reason != tt.want {
				t.Fatalf("got reason of %d bytes (%d in m), want %d", len(got[0].Reason), len(m.Reason), len(tt.want))
			}
		})
	}
}

func TestTelemetryRetentionChunks(t *testing.T) {
	// More blocks and runs of sequence numbers than one deletion
	// transaction (10000) takes, and more blocks reaching past the cut
	// than one trimming transaction (1000) takes.
	db, _ := MustOpenDB(t, tempPath(t))
	ts := sqlite.NewTelemetryService(db)
	devs := createDevices(t, db, 3)
	old := storetest.T0.Add(-48 * time.Hour)
	var msgs []*pylon.TelemetryMessage
	seq := map[string]uint64{}
	for i := range 25 {
		dev := devs[i%len(devs)]
		rs := make([]pylon.Reading, 1000)
		for j := range rs {
			rs[j] = reading(fmt.Sprintf("n%d", j%7), old.Add(time.Duration(i*1000+j)*time.Millisecond), float64(j))
		}
		seq[dev]++
		msgs = append(msgs, &pylon.TelemetryMessage{DeviceID: dev, Seq: seq[dev], Received: old, Readings: rs})
	}
	for i := range 12_000 {
		dev := devs[i%len(devs)]
		seq[dev] += 2 // a gap: each message a run of its own
		msgs = append(msgs, &pylon.TelemetryMessage{DeviceID: dev, Seq: seq[dev], Received: old,
			Readings: []pylon.Reading{reading("single", old.Add(time.Duration(i)*time.Microsecond), 2)}})
	}
	// Blocks on both sides of the cut: 1,500 series with a reading before
	// and one after it.
	cut := storetest.T0.Add(-time.Hour)
	for i := range 1500 {
		dev := devs[i%len(devs)]
		seq[dev]++
		msgs = append(msgs, &pylon.TelemetryMessage{DeviceID: dev, Seq: seq[dev], Received: old, Readings: []pylon.Reading{
			reading(fmt.Sprintf("both%d", i), cut.Add(-time.Second), 3),
			reading(fmt.Sprintf("both%d", i), cut.Add(time.Second), 4),
		}})
	}
	for batch := range slices.Chunk(msgs, 1000) {
		mustWrite(t, ts, pylon.WriteStored, batch...)
	}
	// One recent reading stays.
	dev := devs[0]
	seq[dev]++
	mustWrite(t, ts, pylon.WriteStored, &pylon.TelemetryMessage{DeviceID: dev, Seq: seq[dev], Received: storetest.T0,
		Readings: []pylon.Reading{reading("n0", storetest.T0, 1)}})

	n, err := ts.DeleteReadingsBefore(context.Background(), cut)
	if err != nil || n != 25_000+12_000+1500 {
		t.Fatalf("got %d deleted, %v; want %d", n, err, 25_000+12_000+1500)
	}
	raw := openRaw(t, db.DSN)
	var readings, blocks, runs int
	if err := raw.QueryRow(`SELECT (SELECT coalesce(sum(n), 0) FROM blocks), (SELECT count(*) FROM blocks), (SELECT count(*) FROM sequences)`).Scan(&readings, &blocks, &runs); err != nil {
		t.Fatal(err)
	}
	// Left: the recent reading and the later reading of each straddling
	// block; the top run of each device (the first device's holds the
	// recent message).
	if readings != 1501 || blocks != 1501 || runs != len(devs) {
		t.Fatalf("got %d readings in %d blocks and %d runs left, want 1501, 1501 and %d", readings, blocks, runs, len(devs))
	}
	for i := range 1500 {
		got, _, err := ts.FindReadings(context.Background(), pylon.ReadingFilter{DeviceID: devs[i%len(devs)], Name: fmt.Sprintf("both%d", i)})
		if err != nil || len(got) != 1 || !got[0].Time.Equal(cut.Add(time.Second)) || *got[0].Value != 4 {
			t.Fatalf("series both%d after the cut: got %v, %v; want the reading of 4 at %v", i, got, err, cut.Add(time.Second))
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestRunRetention(t *testing.T) {
	var logs syncBuffer
	db := sqlite.NewDB(tempPath(t), slog.New(slog.NewTextHandler(&logs, nil)))
	c := &clock{t: storetest.T0}
	db.Now = c.Now
	if err := db.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	mustWrite(t, ts, pylon.WriteStored,
		&pylon.TelemetryMessage{DeviceID: dev, Seq: 1, Received: storetest.T0, Readings: []pylon.Reading{
			reading("temp", storetest.T0.Add(-3*time.Hour), 1), reading("temp", storetest.T0.Add(-2*time.Hour), 2), reading("temp", storetest.T0, 3)}})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts.RunRetention(ctx, 90*time.Minute, 10*time.Millisecond)
	}()
	// The first run deletes the two old readings; later runs find nothing.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "deleted=2") {
		if time.Now().After(deadline) {
			t.Fatalf("no retention log within 10s; logs: %s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Time passes: the next run deletes the last reading.
	c.Set(storetest.T0.Add(2 * time.Hour))
	for !strings.Contains(logs.String(), "deleted=1") {
		if time.Now().After(deadline) {
			t.Fatalf("no second retention log within 10s; logs: %s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("RunRetention did not return after cancel")
	}
	if got, _, err := ts.FindReadings(context.Background(), pylon.ReadingFilter{DeviceID: dev}); err != nil || len(got) != 0 {
		t.Fatalf("got %d readings (%v), want 0", len(got), err)
	}
	if n := strings.Count(logs.String(), "level=INFO msg=\"telemetry retention\""); n != 2 {
		t.Fatalf("got %d retention logs, want 2 (none when nothing was deleted): %s", n, logs.String())
	}

	// Disabled retention returns at once.
	ts.RunRetention(context.Background(), 0, time.Second)
}

func TestTelemetryManySeries(t *testing.T) {
	// More names than one compound query merges (200): the pages of
	// several queries are merged.
	const names, per = 450, 3
	db, _ := MustOpenDB(t, tempPath(t))
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	var rs []pylon.Reading
	for i := range names * per {
		// Reading i: name i%names, time i ms, value i.
		rs = append(rs, reading(fmt.Sprintf("n%03d", i%names), storetest.T0.Add(time.Duration(i)*time.Millisecond), float64(i)))
	}
	mustWrite(t, ts, pylon.WriteStored, &pylon.TelemetryMessage{DeviceID: dev, Seq: 1, Readings: rs[:1000]}, &pylon.TelemetryMessage{DeviceID: dev, Seq: 2, Readings: rs[1000:]})
	for _, desc := range []bool{false, true} {
		t.Run(fmt.Sprintf("desc=%v", desc), func(t *testing.T) {
			var got []float64
			f := pylon.ReadingFilter{DeviceID: dev, Limit: 77, Desc: desc}
			for {
				page, next, err := ts.FindReadings(context.Background(), f)
				if err != nil {
					t.Fatalf("find: %v", err)
				}
				for _, r := range page {
					if want := fmt.Sprintf("n%03d", int(*r.Value)%names); r.Name != want {
						t.Fatalf("reading %v: got name %s, want %s", *r.Value, r.Name, want)
					}
					got = append(got, *r.Value)
				}
				if next == "" {
					break
				}
				f.Cursor = next
			}
			want := make([]float64, names*per)
			for i := range want {
				want[i] = float64(i)
			}
			if desc {
				slices.Reverse(want)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("got %d readings in order %v..., want %d in time order", len(got), got[:min(len(got), 5)], len(want))
			}
		})
	}
	latest, err := ts.LatestReadings(context.Background(), dev)
	if err != nil || len(latest) != names {
		t.Fatalf("got %d latest readings (%v), want %d", len(latest), err, names)
	}
	for i, r := range latest {
		if want := float64((per-1)*names + i); *r.Value != want {
			t.Fatalf("latest %s: got %v, want %v", r.Name, *r.Value, want)
		}
	}
}

func TestTelemetrySecondWriter(t *testing.T) {
	// Two services on one database break the single-writer assumption of
	// the caches; a constraint failure makes the stale one look again.
	db, _ := MustOpenDB(t, tempPath(t))
	one, two := sqlite.NewTelemetryService(db), sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	m := func(seq uint64) *pylon.TelemetryMessage {
		return &pylon.TelemetryMessage{DeviceID: dev, Seq: seq, Readings: []pylon.Reading{reading("temp", storetest.T0, float64(seq))}}
	}
	mustWrite(t, two, pylon.WriteStored, m(1))       // two caches seq 1
	mustWrite(t, one, pylon.WriteStored, m(2), m(3)) // behind two's back
	st, err := two.WriteMessages(context.Background(), []*pylon.TelemetryMessage{m(3), m(4)})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if st[0] != pylon.WriteDuplicate || st[1] != pylon.WriteStored {
		t.Fatalf("got statuses %v, want duplicate, stored", st)
	}
	got, _, err := one.FindReadings(context.Background(), pylon.ReadingFilter{DeviceID: dev})
	if err != nil || len(got) != 4 {
		t.Fatalf("got %d readings (%v), want 4", len(got), err)
	}
}

func TestTelemetryMemory(t *testing.T) {
	// With ":memory:", reads and the write transaction share one
	// connection; nothing may wait on itself.
	db, _ := MustOpenDB(t, sqlite.MemoryDSN)
	ts := sqlite.NewTelemetryService(db)
	devs := createDevices(t, db, 2)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, err := ts.WriteMessages(context.Background(), []*pylon.TelemetryMessage{
				{DeviceID: devs[i%2], Seq: uint64(i + 1), Readings: []pylon.Reading{reading("temp", storetest.T0, float64(i))}}})
			if err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			if _, _, err := ts.FindReadings(context.Background(), pylon.ReadingFilter{DeviceID: devs[i%2]}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent use: %v", err)
	}
	got, _, err := ts.FindReadings(context.Background(), pylon.ReadingFilter{DeviceID: devs[0]})
	if err != nil || len(got) != 10 {
		t.Fatalf("got %d readings (%v), want 10", len(got), err)
	}
}

func TestTelemetryClosedDB(t *testing.T) {
	db, _ := MustOpenDB(t, tempPath(t))
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	msg := &pylon.TelemetryMessage{DeviceID: dev, Seq: 1, Readings: []pylon.Reading{reading("temp", storetest.T0, 1)}}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.WriteMessages(context.Background(), []*pylon.TelemetryMessage{msg}); pylon.ErrorCode(err) != pylon.EINTERNAL {
		t.Fatalf("write after close: got %v, want an internal error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sqlite.NewTelemetryService(db).WriteMessages(ctx, []*pylon.TelemetryMessage{msg}); err == nil {
		t.Fatal("write with a cancelled context: got no error")
	}
}

// benchFleet creates devices in a file database, bypassing the store for
// speed, and returns the service and the device IDs.
func benchFleet(b *testing.B, devices int) (*sqlite.TelemetryService, *sql.DB, []string) {
	path := tempPath(b)
	db, _ := MustOpenDB(b, path)
	raw := loadDevices(b, path, devices)
	rows, err := raw.Query(`SELECT id FROM devices ORDER BY seq`)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	return sqlite.NewTelemetryService(db), raw, ids
}

// BenchmarkWriteMessages measures stored readings per second for the
// batch shapes of the ingest path, with messages spread round-robin over
// a fleet. Each iteration is one WriteMessages call (one commit). A
// message's readings are of names different names ("50 names": one
// reading of each of 50 sensors) or all of one name ("1 name": a device's
// 50 samples of one sensor, 1 ms apart).
func BenchmarkWriteMessages(b *testing.B) {
	for _, bc := range []struct {
		msgs, readings, names, devices int
	}{
		{64, 1, 1, 16},
		{64, 1, 1, 1000},
		{16, 50, 50, 16},
		{16, 50, 50, 1000},
		{64, 50, 1, 200},
		{20, 50, 1, 200},
		{140, 1, 1, 200},
	} {
		name := fmt.Sprintf("%dx%d/names=%d/devices=%d", bc.msgs, bc.readings, bc.names, bc.devices)
		b.Run(name, func(b *testing.B) {
			ts, _, devs := benchFleet(b, bc.devices)
			names := make([]string, bc.names)
			for i := range names {
				names[i] = fmt.Sprintf("sensor/%d", i)
			}
			seqs := make([]uint64, len(devs))
			msgs := make([]*pylon.TelemetryMessage, bc.msgs)
			for i := range msgs {
				msgs[i] = &pylon.TelemetryMessage{Readings: make([]pylon.Reading, bc.readings)}
			}
			ctx := context.Background()
			now := storetest.T0
			next := 0
			stored := 0
			for b.Loop() {
				for _, m := range msgs {
					d := next % len(devs)
					next++
					seqs[d]++
					now = now.Add(time.Millisecond)
					m.DeviceID, m.Seq, m.Received = devs[d], seqs[d], now
					for j := range m.Readings {
						v := float64(next) * 0.25
						m.Readings[j] = pylon.Reading{Name: names[j%len(names)], Unit: "Cel", Time: now.Add(time.Duration(j-len(m.Readings)) * time.Millisecond), Value: &v}
					}
				}
				st, err := ts.WriteMessages(ctx, msgs)
				if err != nil {
					b.Fatal(err)
				}
				if st[len(st)-1] != pylon.WriteStored {
					b.Fatalf("got status %d, want stored", st[len(st)-1])
				}
				stored += bc.msgs * bc.readings
			}
			b.ReportMetric(float64(stored)/b.Elapsed().Seconds(), "readings/s")
		})
	}
}

// BenchmarkFindReadings measures reading a device's readings back: pages
// of 1000 from the middle of 100,000 readings of one series, stored as
// single readings or as packs of 50, going up and going down, and the
// newest readings.
func BenchmarkFindReadings(b *testing.B) {
	for _, per := range []int{1, 50} {
		ts, _, devs := benchFleet(b, 1)
		ctx := context.Background()
		var seq uint64
		for range 100_000 / per / 100 {
			msgs := make([]*pylon.TelemetryMessage, 100)
			for i := range msgs {
				seq++
				m := &pylon.TelemetryMessage{DeviceID: devs[0], Seq: seq, Readings: make([]pylon.Reading, per)}
				for j := range m.Readings {
					n := int(seq-1)*per + j
					m.Readings[j] = reading("temp", storetest.T0.Add(time.Duration(n)*time.Second), float64(n))
				}
				msgs[i] = m
			}
			mustWrite(b, ts, pylon.WriteStored, msgs...)
		}
		mid := storetest.T0.Add(50_000 * time.Second)
		for _, desc := range []bool{false, true} {
			b.Run(fmt.Sprintf("per=%d/desc=%v", per, desc), func(b *testing.B) {
				f := pylon.ReadingFilter{DeviceID: devs[0], From: &mid, Limit: 1000, Desc: desc}
				if desc {
					f.From, f.To = nil, &mid
				}
				for b.Loop() {
					got, _, err := ts.FindReadings(ctx, f)
					if err != nil || len(got) != 1000 {
						b.Fatalf("got %d readings, %v", len(got), err)
					}
				}
				b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "readings/s")
			})
		}
		b.Run(fmt.Sprintf("per=%d/latest", per), func(b *testing.B) {
			for b.Loop() {
				if got, err := ts.LatestReadings(ctx, devs[0]); err != nil || len(got) != 1 {
					b.Fatalf("got %d readings, %v", len(got), err)
				}
			}
		})
	}
}

// pack50 returns message seq of dev: 50 readings of series s0…s49, at
// seq seconds after T0, of value seq.
func pack50(dev string, seq uint64) *pylon.TelemetryMessage {
	rs := make([]pylon.Reading, 50)
	for j := range rs {
		rs[j] = reading(fmt.Sprintf("s%d", j), storetest.T0.Add(time.Duration(seq)*time.Second), float64(seq))
	}
	return &pylon.TelemetryMessage{DeviceID: dev, Seq: seq, Readings: rs}
}

// openRestartingAt opens the database at path with a checkpointer that
// starts the WAL over once it is pages long.
func openRestartingAt(t *testing.T, path string, pages int) *sqlite.DB {
	t.Helper()
	db := sqlite.NewDB(path, nil)
	db.SetRestartPages(pages)
	if err := db.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestBackgroundCheckpoint checks that the writer leaves checkpoints to the
// background checkpointer, and that it runs: the database file grows (only
// a checkpoint writes to it) and the WAL is started over, so that it does
// not grow with every write.
func TestBackgroundCheckpoint(t *testing.T) {
	path := tempPath(t)
	db := openRestartingAt(t, path, 4096) // 16 MiB
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	size := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size(path)
	var seq uint64
	write := func() {
		msgs := make([]*pylon.TelemetryMessage, 100)
		for i := range msgs {
			seq++
			msgs[i] = pack50(dev, seq)
		}
		if _, err := ts.WriteMessages(context.Background(), msgs); err != nil {
			t.Fatal(err)
		}
	}
	// 20 commits of 5,000 readings: well over the 1,000 WAL pages at which
	// SQLite's automatic checkpoint would run.
	for range 20 {
		write()
	}
	deadline := time.Now().Add(10 * time.Second)
	for size(path) < before+1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("database file still %d bytes (was %d) 10 s after the writes: no checkpoint ran", size(path), before)
		}
		write()
		time.Sleep(20 * time.Millisecond)
	}
	// The WAL is reused from its start once it was checkpointed: its size
	// stays bounded however much is written.
	for range 100 {
		write()
		time.Sleep(5 * time.Millisecond)
	}
	if wal := size(path + "-wal"); wal > 64<<20 {
		t.Fatalf("WAL is %d bytes after the writes: it is not being started over", wal)
	}
	got, err := ts.AggregateReadings(context.Background(), pylon.AggregateFilter{DeviceID: dev, Name: "s0", Agg: pylon.AggCount, Bucket: 1000 * time.Hour, From: storetest.T0, To: storetest.T0.Add(1000 * time.Hour)})
	if err != nil || len(got) != 1 || got[0].Count != int64(seq) {
		t.Fatalf("count of s0: got %v (%v), want %d readings", got, err, seq)
	}
}

// closeWhenWaiting waits until waiting reports that who waits for the
// writer (held by a transaction left open), then fails t unless Close
// returns within 20 s.
func closeWhenWaiting(t *testing.T, db *sqlite.DB, who string, waiting func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !waiting(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not wait for the writer in 10 s", who)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatalf("Close did not return in 20 s with a write transaction open and %s waiting for the writer", who)
	}
}

// TestCloseWithWriteTransactionOpen: a write transaction left open (a bug)
// holds the writer's connection, for which the checkpointer waits to start
// the WAL over; Close ends that wait, long before the wait's own limit.
func TestCloseWithWriteTransactionOpen(t *testing.T) {
	ctx := context.Background()
	db := sqlite.NewDB(tempPath(t), nil)
	db.SetRestartPages(1) // every round goes on to the writer
	var waiting atomic.Bool
	db.SetWriterWait(time.Hour, waiting.Store)
	if err := db.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]
	if _, err := ts.WriteMessages(ctx, []*pylon.TelemetryMessage{pack50(dev, 1)}); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	// The WAL is not empty, so the next round waits for the writer, if
	// the last one is not waiting already.
	db.KickCheckpointer()
	closeWhenWaiting(t, db, "the checkpointer", waiting.Load)
}

// TestCloseWithGroupCommitWaiting: a group commit waits for the writer's
// connection, which a write transaction left open (a bug) holds; Close
// gives it a few seconds and then ends the wait, and the write fails.
func TestCloseWithGroupCommitWaiting(t *testing.T) {
	ctx := context.Background()
	db, _ := MustOpenDB(t, tempPath(t))
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	waits := db.WriterWaits()
	ran := false
	written := make(chan error, 1)
	go func() {
		written <- db.RunBatched(ctx, func(context.Context, *sqlite.Tx) error {
			ran = true
			return nil
		})
	}()
	closeWhenWaiting(t, db, "a group commit", func() bool { return db.WriterWaits() > waits })
	if err := <-written; err == nil || ran {
		t.Fatalf("the waiting write: got %v (ran: %v), want an error and not run", err, ran)
	}
}

// TestWALRestartsUnderSteadyWrites checks that the WAL starts over while
// the writer commits back to back, with no pause in which SQLite would
// start it over by itself: the checkpointer's last round on the writer's
// connection lets it. Each restart increments the checkpoint sequence
// number in the WAL header (bytes 12–15).
func TestWALRestartsUnderSteadyWrites(t *testing.T) {
	path := tempPath(t)
	db := openRestartingAt(t, path, 256) // 1 MiB
	ts := sqlite.NewTelemetryService(db)
	devs := createDevices(t, db, 20)
	walSeq := func() uint32 {
		f, err := os.Open(path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var h [16]byte
		if _, err := f.ReadAt(h[:], 0); err != nil {
			t.Fatalf("read WAL header: %v", err)
		}
		return uint32(h[12])<<24 | uint32(h[13])<<16 | uint32(h[14])<<8 | uint32(h[15])
	}
	var seq uint64
	write := func() {
		msgs := make([]*pylon.TelemetryMessage, len(devs))
		seq++
		for i, dev := range devs {
			msgs[i] = pack50(dev, seq)
		}
		if _, err := ts.WriteMessages(context.Background(), msgs); err != nil {
			t.Fatal(err)
		}
	}
	write()
	first := walSeq()
	const restarts = 5
	deadline := time.Now().Add(30 * time.Second)
	for walSeq()-first < restarts {
		if time.Now().After(deadline) {
			t.Fatalf("the WAL started over %d times in 30 s of steady writes (%d commits), want %d", walSeq()-first, seq, restarts)
		}
		write()
	}
	t.Logf("%d restarts in %d commits", walSeq()-first, seq)
}

// closedWithDevices makes a database file with n devices, closes it, and
// returns its path and the devices' IDs: a database to turn back into an
// older schema.
func closedWithDevices(t *testing.T, n int) (string, []string) {
	t.Helper()
	path := tempPath(t)
	db := sqlite.NewDB(path, nil)
	if err := db.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	devs := createDevices(t, db, n)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path, devs
}

// TestMigration005_SequenceRuns applies migration 005 to a database that
// still has the message log of 002, with gaps: the stored sequence
// numbers become runs, and deduplication and the replay window decide as
// before.
func TestMigration005_SequenceRuns(t *testing.T) {
	ctx := context.Background()
	path, devs := closedWithDevices(t, 2)
	raw := openRaw(t, path)
	stmts := []string{
		`DROP TABLE sequences`,
		`CREATE TABLE messages (device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
			seq INTEGER NOT NULL, received INTEGER NOT NULL, PRIMARY KEY (device_id, seq)) WITHOUT ROWID`,
		`CREATE INDEX messages_received_idx ON messages (received)`,
		`DELETE FROM migrations WHERE name = '005_sequence_runs.sql'`,
	}
	// Device 0 stored 1–3, 7, 9–10 and 10000; device 1 stored 5.
	for _, seq := range []int{1, 2, 3, 7, 9, 10, 10000} {
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO messages VALUES ('%s', %d, %d)`, devs[0], seq, seq))
	}
	stmts = append(stmts, fmt.Sprintf(`INSERT INTO messages VALUES ('%s', 5, 1)`, devs[1]))
	for _, q := range stmts {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	raw.Close()

	db, _ := MustOpenDB(t, path) // applies 005
	rows, err := openRaw(t, path).Query(`SELECT device_id, lo, hi, received FROM sequences ORDER BY device_id = ?, lo`, devs[1])
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var d string
		var lo, hi, received int64
		if err := rows.Scan(&d, &lo, &hi, &received); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d:%d-%d@%d", slices.Index(devs, d), lo, hi, received))
	}
	if want := "0:1-3@3 0:7-7@7 0:9-10@10 0:10000-10000@10000 1:5-5@1"; strings.Join(got, " ") != want {
		t.Fatalf("runs: got %s, want %s", strings.Join(got, " "), want)
	}
	ts := sqlite.NewTelemetryService(db)
	m := func(dev string, seq uint64) *pylon.TelemetryMessage {
		return &pylon.TelemetryMessage{DeviceID: dev, Seq: seq, Readings: []pylon.Reading{reading("temp", storetest.T0, 1)}}
	}
	st, err := ts.WriteMessages(ctx, []*pylon.TelemetryMessage{
		m(devs[0], 2), m(devs[0], 8), m(devs[0], 9), m(devs[0], 6000), m(devs[0], 10001), m(devs[1], 5), m(devs[1], 6),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []pylon.WriteStatus{pylon.WriteDuplicate, pylon.WriteReplay, pylon.WriteDuplicate, pylon.WriteStored,
		pylon.WriteStored, pylon.WriteDuplicate, pylon.WriteStored}
	if !slices.Equal(st, want) {
		t.Fatalf("after the migration: got statuses %v, want %v", st, want)
	}
}

// TestMigration006_ReadingBlocks writes readings as rows of the old
// readings table and checks that, after the migration moves them into
// blocks, every series reads back the same readings in the same order.
func TestMigration006_ReadingBlocks(t *testing.T) {
	ctx := context.Background()
	path, devs := closedWithDevices(t, 2)
	raw := openRaw(t, path)
	back006(t, raw, fmt.Sprintf(`INSERT INTO series (device_id, name) VALUES ('%s', 'temp'), ('%s', 'mixed'), ('%s', 'temp')`, devs[0], devs[0], devs[1]))
	// Series 1: 2,500 readings, two at each time, stored newest first, so
	// that the order of rows is not the order of times. Series 2: every
	// kind of value, units that differ, over three hours (more than one
	// block's span). Series 3: another device's.
	want := map[int][]pylon.Reading{}
	var exec interface {
		Exec(query string, args ...any) (sql.Result, error)
	} = raw
	insert := func(series int, r pylon.Reading) {
		var v, vs, vb, vd, sum any
		if r.Value != nil {
			v = *r.Value
		}
		if r.StringValue != nil {
			vs = *r.StringValue
		}
		if r.BoolValue != nil {
			vb = *r.BoolValue
		}
		if r.DataValue != nil {
			vd = r.DataValue
		}
		if r.Sum != nil {
			sum = *r.Sum
		}
		if _, err := exec.Exec(`INSERT INTO readings (series, time, unit, v, vs, vb, vd, s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			series, r.Time.UnixNano(), r.Unit, v, vs, vb, vd, sum); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	exec = tx
	for i := 2499; i >= 0; i-- {
		insert(1, reading("temp", storetest.T0.Add(time.Duration(i/2)*time.Second), float64(i)))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	exec = raw
	for i := 2499; i >= 0; i-- {
		// Equal times come in the order of their rows: here, i+1 first.
		want[1] = append(want[1], reading("temp", storetest.T0.Add(time.Duration(i/2)*time.Second), float64(i)))
	}
	slices.SortStableFunc(want[1], func(a, b pylon.Reading) int { return a.Time.Compare(b.Time) })
	str, yes, sum, neg := "on", true, 12.5, math.Copysign(0, -1)
	for i, r := range []pylon.Reading{
		{Unit: "Cel", Value: &neg},
		{Unit: "", StringValue: &str},
		{Unit: "Cel", BoolValue: &yes},
		{Unit: "Cel", DataValue: []byte{}},
		{Unit: "W", DataValue: []byte{1, 2, 3}},
		{Unit: "J", Sum: &sum},
		{Unit: "J", Value: &sum, Sum: &sum},
	} {
		r.Name, r.Time = "mixed", storetest.T0.Add(time.Duration(i)*30*time.Minute)
		insert(2, r)
		want[2] = append(want[2], r)
	}
	insert(3, reading("temp", storetest.T0, 7))
	want[3] = []pylon.Reading{reading("temp", storetest.T0, 7)}
	raw.Close()

	db, _ := MustOpenDB(t, path) // applies 006
	ts := sqlite.NewTelemetryService(db)
	for series, dev := range map[int]string{1: devs[0], 2: devs[0], 3: devs[1]} {
		name := want[series][0].Name
		var got []pylon.Reading
		for cursor := ""; ; {
			page, next, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: dev, Name: name, Cursor: cursor, Limit: 333})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range page {
				got = append(got, *r)
			}
			if cursor = next; cursor == "" {
				break
			}
		}
		for i := range want[series] {
			want[series][i].DeviceID = dev
			want[series][i].Time = time.Unix(0, want[series][i].Time.UnixNano()).UTC()
		}
		if !reflect.DeepEqual(got, want[series]) {
			t.Errorf("series %d after the migration: got %d readings, want %d; first got %+v, want %+v",
				series, len(got), len(want[series]), got[:min(3, len(got))], want[series][:min(3, len(want[series]))])
		}
	}
	got, _, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: devs[0], Name: "mixed", Limit: 1})
	if err != nil || len(got) != 1 || got[0].Value == nil || !math.Signbit(*got[0].Value) {
		t.Fatalf("-0 after the migration: got %+v (%v)", got, err)
	}
	var tables int
	if err := openRaw(t, path).QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name = 'readings'`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("readings table left: %d (%v)", tables, err)
	}
}
