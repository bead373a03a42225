package sqlite_test

// Edge cases of the block store (block.go): retention inside a block,
// times at both ends of the range, and reads racing writes.

import (
	"context"
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
