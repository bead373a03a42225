package sqlite_test

// Edge cases of the block store (block.go): retention inside a block,
// times at both ends of the range, and reads racing writes.

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sqlite"
	"github.com/pylonhq/pylon/storetest"
)

// TestTelemetryCursorAcrossTrim: a cursor inside a block that retention then
// trims must still page on from the same reading.
func TestTelemetryCursorAcrossTrim(t *testing.T) {
	for _, desc := range []bool{false, true} {
		ctx := context.Background()
		ts, dev := oneDevice(t)
		t0 := storetest.T0
		m := &pylon.TelemetryMessage{DeviceID: dev, Seq: 1, Readings: []pylon.Reading{
			reading("x", t0, 0), reading("x", t0, 1), // to be deleted
			reading("x", t0.Add(time.Minute), 2), reading("x", t0.Add(time.Minute), 3),
			reading("x", t0.Add(time.Minute), 4), reading("x", t0.Add(time.Minute), 5),
		}}
		mustWrite(t, ts, pylon.WriteStored, m)
		f := pylon.ReadingFilter{DeviceID: dev, Name: "x", Limit: 3, Desc: desc}
		if desc {
			f.Limit = 2
		}
		page, next, err := ts.FindReadings(ctx, f)
		if err != nil || next == "" {
			t.Fatal(page, next, err)
		}
		var got []float64
		for _, r := range page {
			got = append(got, *r.Value)
		}
		if n, err := ts.DeleteReadingsBefore(ctx, t0.Add(time.Second)); err != nil || n != 2 {
			t.Fatal(n, err)
		}
		f.Cursor, f.Limit = next, 100
		page, _, err = ts.FindReadings(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			got = append(got, *r.Value)
		}
		// asc: 0 1 2 | 3 4 5 expected; desc: 5 4 | 3 2 expected
		t.Logf("desc=%v: readings seen across the trim: %v", desc, got)
		if want := map[bool]int{false: 6, true: 4}[desc]; len(got) != want {
			t.Errorf("desc=%v: got %v, want %d distinct readings", desc, got, want)
		}
	}
}

// TestTelemetryExtremeTimes: readings of one series near both ends of the
// time range, in one message.
func TestTelemetryExtremeTimes(t *testing.T) {
	ctx := context.Background()
	ts, dev := oneDevice(t)
	early := time.Unix(0, math.MinInt64+1).UTC()
	late := time.Unix(0, math.MaxInt64-1).UTC()
	mid := time.Unix(0, 0).UTC()
	mustWrite(t, ts, pylon.WriteStored, &pylon.TelemetryMessage{DeviceID: dev, Seq: 1, Readings: []pylon.Reading{
		reading("x", early, 1), reading("x", late, 2),
	}})
	for _, desc := range []bool{false, true} {
		all, _, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: dev, Name: "x", Desc: desc})
		if err != nil || len(all) != 2 || all[0].Time.After(all[1].Time) != desc {
			t.Errorf("desc=%v: got %v, %v; want both readings in order", desc, all, err)
		}
	}
	page, _, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: dev, Name: "x", From: &mid})
	if err != nil || len(page) != 1 {
		t.Errorf("from 1970: got %d readings, %v; want 1 (the late one)", len(page), err)
	}
	latest, err := ts.LatestReadings(ctx, dev)
	if err != nil || len(latest) != 1 || !latest[0].Time.Equal(late) {
		t.Errorf("latest: %v, %v", latest, err)
	}
	n, err := ts.DeleteReadingsBefore(ctx, mid)
	if err != nil || n != 1 {
		t.Errorf("retention before 1970: deleted %d, %v; want 1", n, err)
	}
}

// TestTelemetryAggregateEarliest: a bucket at the start of the time range.
func TestTelemetryAggregateEarliest(t *testing.T) {
	ctx := context.Background()
	ts, dev := oneDevice(t)
	early := time.Unix(0, math.MinInt64+1).UTC()
	mustWrite(t, ts, pylon.WriteStored, &pylon.TelemetryMessage{DeviceID: dev, Seq: 1, Readings: []pylon.Reading{reading("x", early, 1)}})
	bs, err := ts.AggregateReadings(ctx, pylon.AggregateFilter{DeviceID: dev, Name: "x", From: early, To: early.Add(time.Hour), Bucket: time.Hour, Agg: pylon.AggCount})
	if err != nil || len(bs) != 1 {
		t.Fatal(bs, err)
	}
	if bs[0].Start.After(early) {
		t.Errorf("bucket of a reading at %v starts at %v", early, bs[0].Start)
	}
}

// TestTelemetrySpanRace: FindReadings must read series.span and the
// blocks in one snapshot. Read in two, a block that widens the span,
// committed in between, was merged out of order.
func TestTelemetrySpanRace(t *testing.T) {
	ctx := context.Background()
	ts, dev := oneDevice(t)
	t0 := storetest.T0
	seq := uint64(0)
	var bad atomic.Int64
	var example atomic.Value
	for round := range 300 {
		name := fmt.Sprintf("x%d", round)
		var msgs []*pylon.TelemetryMessage
		for i := range 20 {
			seq++
			msgs = append(msgs, &pylon.TelemetryMessage{DeviceID: dev, Seq: seq,
				Readings: []pylon.Reading{reading(name, t0.Add(time.Duration(i)*time.Second), float64(i))}})
		}
		mustWrite(t, ts, pylon.WriteStored, msgs...)
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				page, _, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: dev, Name: name, Desc: true})
				if err != nil {
					t.Error(err)
					return
				}
				for i := 1; i < len(page); i++ {
					if page[i].Time.After(page[i-1].Time) {
						bad.Add(1)
						example.Store(fmt.Sprintf("%d readings, %v before %v", len(page), page[i-1].Time, page[i].Time))
						break
					}
				}
			}
		}()
		time.Sleep(time.Millisecond)
		seq++
		mustWrite(t, ts, pylon.WriteStored, &pylon.TelemetryMessage{DeviceID: dev, Seq: seq, Readings: []pylon.Reading{
			reading(name, t0.Add(-30*time.Minute), -1), reading(name, t0.Add(100*time.Second), 100)}})
		time.Sleep(time.Millisecond)
		stop.Store(true)
		wg.Wait()
	}
	if n := bad.Load(); n > 0 {
		t.Fatalf("%d pages out of order, e.g. %v", n, example.Load())
	}
}

// oneDevice opens a database file with one device and returns its
// telemetry store and the device's ID.
func oneDevice(t *testing.T) (*sqlite.TelemetryService, string) {
	t.Helper()
	db, _ := MustOpenDB(t, tempPath(t))
	return sqlite.NewTelemetryService(db), createDevices(t, db, 1)[0]
}

// TestTelemetryHostileCursorsAndBlocks: a cursor of the row-per-reading
// store, a forged cursor naming a place past any block's end, and blocks
// whose stored data is corrupt or reaches past the end of time give
// errors, never a panic or wrong readings.
func TestTelemetryHostileCursorsAndBlocks(t *testing.T) {
	ctx := context.Background()
	db, _ := MustOpenDB(t, tempPath(t))
	ts := sqlite.NewTelemetryService(db)
	devs := createDevices(t, db, 5)
	dev := devs[0]
	mustWrite(t, ts, pylon.WriteStored, &pylon.TelemetryMessage{DeviceID: dev, Seq: 1, Readings: []pylon.Reading{
		reading("x", storetest.T0, 1), reading("x", storetest.T0.Add(time.Second), 2)}})

	cursor := func(version byte, n int, idx uint32) string {
		b := make([]byte, n)
		b[0] = version
		binary.BigEndian.PutUint64(b[2:], uint64(storetest.T0.UnixNano()))
		if n == 22 {
			binary.BigEndian.PutUint64(b[10:], 1)
			binary.BigEndian.PutUint32(b[18:], idx)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	for name, c := range map[string]string{
		"row-per-reading cursor": cursor('r', 18, 0),
		"place past a block":     cursor('b', 22, pylon.MaxReadingsPerMessage),
		"negative place":         cursor('b', 22, math.MaxUint32),
	} {
		_, _, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: dev, Cursor: c})
		if pylon.ErrorCode(err) != pylon.EINVALID {
			t.Errorf("%s: got %v, want EINVALID", name, err)
		}
	}
	// A well-formed cursor at the first reading pages on to the second.
	got, _, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: dev, Cursor: cursor('b', 22, 0)})
	if err != nil || len(got) != 1 || *got[0].Value != 2 {
		t.Fatalf("after the first reading: got %v, %v; want the second", got, err)
	}

	raw := openRaw(t, db.DSN)
	for i, tc := range []struct{ name, set string }{
		{"not CBOR", `data = x'ff00'`},
		{"too many readings", `data = x'9a7fffffff'`},
		{"past the end of time", `t0 = 9223372036854775000, tick = 1000000000`},
		{"a tick of zero", `tick = 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := devs[1+i]
			mustWrite(t, ts, pylon.WriteStored, &pylon.TelemetryMessage{DeviceID: d, Seq: 1, Readings: []pylon.Reading{
				reading("x", storetest.T0, 1), reading("x", storetest.T0.Add(time.Second), 2)}})
			if _, err := raw.Exec(`UPDATE blocks SET `+tc.set+` WHERE series IN (SELECT id FROM series WHERE device_id = ?)`, d); err != nil {
				t.Fatal(err)
			}
			if got, _, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: d}); err == nil {
				t.Errorf("FindReadings: got %d readings and no error", len(got))
			}
			if got, err := ts.LatestReadings(ctx, d); err == nil {
				t.Errorf("LatestReadings: got %d readings and no error", len(got))
			}
		})
	}
}
