package sqlite

import (
	"math"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

// TestBlockRoundTrip checks that a block's readings come back exactly,
// with the tick its times allow, its size for a typical pack, and the
// order and cuts of appendBlocks.
func TestBlockRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	v := func(f float64) *float64 { return &f }
	for _, tc := range []struct {
		name    string
		offsets []time.Duration
		tick    int64
	}{
		{"seconds", []time.Duration{0, 10 * time.Second, 20 * time.Second, time.Hour}, 1e9},
		{"milliseconds", []time.Duration{0, time.Second, 1500 * time.Millisecond}, 1e6},
		{"microseconds", []time.Duration{0, 3 * time.Microsecond}, 1e3},
		{"nanoseconds", []time.Duration{0, time.Second, time.Second + time.Nanosecond}, 1},
		{"one reading", []time.Duration{0}, 1e9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rs []*pylon.Reading
			for i, o := range tc.offsets {
				rs = append(rs, &pylon.Reading{Unit: "Cel", Time: t0.Add(o), Value: v(float64(i) + 0.5)})
			}
			rs[len(rs)-1].Unit = "K" // not the block's unit
			rs[0].Sum, rs[0].DataValue = v(math.Copysign(0, -1)), []byte{}
			blocks := appendBlocks(nil, 7, append([]*pylon.Reading(nil), rs...))
			if len(blocks) != 1 {
				t.Fatalf("got %d blocks, want 1", len(blocks))
			}
			b := &blocks[0]
			data, _, err := b.encode(nil)
			if err != nil {
				t.Fatal(err)
			}
			if b.tick != tc.tick {
				t.Errorf("tick %d, want %d", b.tick, tc.tick)
			}
			stored := &storedBlock{id: 3, series: 7, t0: b.t0, tick: b.tick, unit: b.unit, data: data}
			var got []*pylon.Reading
			if err := stored.decode(func(k readingKey, r *pylon.Reading) {
				if k.block != 3 || k.idx != len(got) || k.time != r.Time.UnixNano() {
					t.Errorf("reading %d: key %+v", len(got), k)
				}
				got = append(got, r)
			}); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(rs) {
				t.Fatalf("got %d readings, want %d", len(got), len(rs))
			}
			for i, r := range got {
				w := rs[i]
				if !r.Time.Equal(w.Time) || r.Unit != w.Unit || *r.Value != *w.Value {
					t.Errorf("reading %d: got %v %s %v, want %v %s %v", i, r.Time, r.Unit, *r.Value, w.Time, w.Unit, *w.Value)
				}
			}
			if got[0].Sum == nil || !math.Signbit(*got[0].Sum) || got[0].DataValue == nil || len(got[0].DataValue) != 0 {
				t.Errorf("first reading: sum %v, data %v; want -0 and an empty data value", got[0].Sum, got[0].DataValue)
			}
			// A tick too small for the data is refused, not wrapped around.
			stored.t0, stored.tick = maxNanos-1, 1e9
			if len(tc.offsets) > 1 && stored.decode(func(readingKey, *pylon.Reading) {}) == nil {
				t.Error("a block reaching past the end of time decoded")
			}
		})
	}

	// 50 readings 10 s apart, numbers in 1/16 steps: a pack's block.
	var rs []*pylon.Reading
	for i := range 50 {
		rs = append(rs, &pylon.Reading{Unit: "Cel", Time: t0.Add(time.Duration(i) * 10 * time.Second), Value: v(21 + float64(i)/16)})
	}
	b := appendBlocks(nil, 1, rs)[0]
	data, _, err := b.encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 50*7 {
		t.Errorf("a pack's block is %d bytes, want at most 7 a reading", len(data))
	}

	// Out of order, equal times, and more than maxBlockSpan: sorted
	// stably and cut.
	rs = nil
	for i, o := range []time.Duration{2 * time.Hour, 0, time.Minute, 0, 3 * time.Hour} {
		rs = append(rs, &pylon.Reading{Time: t0.Add(o), Value: v(float64(i))})
	}
	var order []float64
	var spans []int64
	for _, b := range appendBlocks(nil, 1, rs) {
		for _, r := range b.readings {
			order = append(order, *r.Value)
		}
		spans = append(spans, b.t1-b.t0)
	}
	if want := []float64{1, 3, 2, 0, 4}; !slicesEqual(order, want) || len(spans) != 2 || spans[0] != int64(time.Minute) || spans[1] != int64(time.Hour) {
		t.Errorf("appendBlocks: order %v in blocks spanning %v; want %v in blocks of 1m and 1h", order, spans, want)
	}
}

func slicesEqual(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
