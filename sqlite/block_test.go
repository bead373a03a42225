package sqlite

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
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
			data := b.encode()
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
	data := b.encode()
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
	if want := []float64{1, 3, 2, 0, 4}; !slices.Equal(order, want) || len(spans) != 2 || spans[0] != int64(time.Minute) || spans[1] != int64(time.Hour) {
		t.Errorf("appendBlocks: order %v in blocks spanning %v; want %v in blocks of 1m and 1h", order, spans, want)
	}
}

// TestBlockEncodeMatchesLibrary checks the hand-written encoder against
// fxamacker/cbor writing the same []blockRecord with ShortestFloat16, over
// random readings of every kind, and that blockDec reads it back.
func TestBlockEncodeMatchesLibrary(t *testing.T) {
	enc, err := cbor.EncOptions{ShortestFloat: cbor.ShortestFloat16}.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 9))
	floats := []float64{0, math.Copysign(0, -1), 1, -1, 21.5625, 0.1, 65504, 65520, 1e-8, 5.960464477539063e-08,
		math.SmallestNonzeroFloat64, math.MaxFloat64, -math.MaxFloat32, 16777217, 1 << 62, -(1 << 63)}
	steps := []int64{0, 1, 999, 1e3, 1e6, 1e9, 10e9, 3600e9}
	t0 := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC).UnixNano()
	for i := range 2000 {
		n := 1 + rng.IntN(60)
		var rs []*pylon.Reading
		at := t0
		for range n {
			at += steps[rng.IntN(len(steps))] / int64(1+rng.IntN(3)) / 64 * 64 * int64(rng.IntN(2))
			r := &pylon.Reading{Unit: []string{"Cel", "", "W"}[rng.IntN(3)], Time: time.Unix(0, at)}
			f := floats[rng.IntN(len(floats))]
			if rng.IntN(3) == 0 {
				f = rng.NormFloat64() * math.Pow(10, float64(rng.IntN(20)-10))
			}
			switch rng.IntN(5) {
			case 0:
				r.Value = &f
			case 1:
				str := []string{"", "on", "ünïcode", string(make([]byte, 300))}[rng.IntN(4)]
				r.StringValue = &str
			case 2:
				b := rng.IntN(2) == 0
				r.BoolValue = &b
			case 3:
				r.DataValue = make([]byte, []int{0, 3, 30, 300}[rng.IntN(4)])
			case 4:
				r.Value, r.Sum = &f, &floats[rng.IntN(len(floats))]
			}
			rs = append(rs, r)
		}
		for _, b := range appendBlocks(nil, 1, rs) {
			got := b.encode()
			var recs []blockRecord
			prev := b.t0
			for _, r := range b.readings {
				rec := blockRecord{DT: uint64((r.Time.UnixNano() - prev) / b.tick), V: r.Value, VS: r.StringValue, VB: r.BoolValue, S: r.Sum}
				prev = r.Time.UnixNano()
				if r.Unit != b.unit {
					rec.U = &r.Unit
				}
				if r.DataValue != nil {
					rec.VD = &r.DataValue
				}
				recs = append(recs, rec)
			}
			want, err := enc.Marshal(recs)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("block %d: encoded\n%x\nfxamacker/cbor:\n%x", i, got, want)
			}
			var back []blockRecord
			if err := blockDec.Unmarshal(got, &back); err != nil || len(back) != len(b.readings) {
				t.Fatalf("block %d: decoded %d records, %v", i, len(back), err)
			}
		}
	}
}
