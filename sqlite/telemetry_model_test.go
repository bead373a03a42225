package sqlite_test

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sqlite"
	"github.com/pylonhq/pylon/storetest"
)

// modelReading is a reading as the model knows it: its place in the order
// stored (message, rank of its name in the message, index in the message).
type modelReading struct {
	name      string
	t         int64
	v         float64
	msg, rank int
	idxInMsg  int
}

func modelCmp(a, b modelReading) int {
	return cmp.Or(cmp.Compare(a.t, b.t), cmp.Compare(a.msg, b.msg), cmp.Compare(a.rank, b.rank), cmp.Compare(a.idxInMsg, b.idxInMsg))
}

// TestTelemetryRandomModel compares FindReadings, LatestReadings,
// AggregateReadings and DeleteReadingsBefore with an in-memory model over
// random messages.
func TestTelemetryRandomModel(t *testing.T) {
	seeds := 6
	if testing.Short() {
		seeds = 3
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomModelRun(t, uint64(seed)) })
	}
}

func randomModelRun(t *testing.T, seed uint64) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 99))
	db, _ := MustOpenDB(t, tempPath(t))
	ts := sqlite.NewTelemetryService(db)
	dev := createDevices(t, db, 1)[0]

	nNames := 1 + rng.IntN(5)
	if seed%4 == 3 {
		nNames = 230 // more than maxArms: chunks merged
	}
	names := make([]string, nNames)
	for i := range names {
		names[i] = fmt.Sprintf("n%03d", i)
	}
	base := storetest.T0.UnixNano()
	grains := []int64{1, 1000, int64(time.Millisecond), int64(time.Second), int64(time.Minute)}
	var model []modelReading
	nMsgs := 30 + rng.IntN(60)
	for mi := range nMsgs {
		m := &pylon.TelemetryMessage{DeviceID: dev, Seq: uint64(mi + 1)}
		n := 1 + rng.IntN(40)
		if rng.IntN(10) == 0 {
			n = 300
		}
		grain := grains[rng.IntN(len(grains))]
		width := int64(1 + rng.IntN(6)) // in units of 30 minutes
		rank := map[string]int{}
		for j := range n {
			name := names[rng.IntN(len(names))]
			if _, ok := rank[name]; !ok {
				rank[name] = len(rank)
			}
			off := rng.Int64N(width*int64(30*time.Minute)) / grain * grain
			if rng.IntN(4) == 0 { // ties
				off = int64(rng.IntN(3)) * int64(time.Minute)
			}
			tm := base + off + int64(rng.IntN(4))*int64(time.Hour)
			v := float64(mi*1000 + j)
			m.Readings = append(m.Readings, pylon.Reading{Name: name, Unit: "W", Time: time.Unix(0, tm).UTC(), Value: &v})
			model = append(model, modelReading{name: name, t: tm, v: v, msg: mi, rank: rank[name], idxInMsg: j})
		}
		mustWrite(t, ts, pylon.WriteStored, m)
	}
	slices.SortFunc(model, modelCmp)
	lo, hi := model[0].t, model[len(model)-1].t

	check := func(phase string) {
		t.Helper()
		// FindReadings.
		for q := range 25 {
			f := pylon.ReadingFilter{DeviceID: dev, Desc: rng.IntN(2) == 0}
			if rng.IntN(3) > 0 {
				f.Name = names[rng.IntN(len(names))]
			}
			var from, to int64 = math.MinInt64, math.MaxInt64
			if rng.IntN(2) == 0 {
				from = lo + rng.Int64N(hi-lo+2) - 1
				ft := time.Unix(0, from).UTC()
				f.From = &ft
			}
			if rng.IntN(2) == 0 {
				to = lo + rng.Int64N(hi-lo+2)
				tt := time.Unix(0, to).UTC()
				f.To = &tt
			}
			var want []modelReading
			for _, r := range model {
				if (f.Name == "" || r.name == f.Name) && r.t >= from && r.t < to {
					want = append(want, r)
				}
			}
			if f.Desc {
				slices.Reverse(want)
			}
			var got []*pylon.Reading
			pages := 0
			for cursor := ""; ; pages++ {
				f.Cursor, f.Limit = cursor, 1+rng.IntN(60)
				if rng.IntN(8) == 0 {
					f.Limit = 1
				}
				page, next, err := ts.FindReadings(ctx, f)
				if err != nil {
					t.Fatalf("%s: query %d: %v", phase, q, err)
				}
				if next != "" && len(page) != f.Limit {
					t.Fatalf("%s: query %d: page of %d with a next cursor, limit %d", phase, q, len(page), f.Limit)
				}
				got = append(got, page...)
				if next == "" {
					break
				}
				cursor = next
				if pages > 100000 {
					t.Fatal("no end")
				}
			}
			if len(got) != len(want) {
				t.Fatalf("%s: query %d %+v: got %d readings, want %d", phase, q, f, len(got), len(want))
			}
			for i := range got {
				if got[i].Time.UnixNano() != want[i].t || *got[i].Value != want[i].v || got[i].Name != want[i].name {
					t.Fatalf("%s: query %d %+v: reading %d: got %s %v @%d, want %s %v @%d", phase, q, f, i,
						got[i].Name, *got[i].Value, got[i].Time.UnixNano(), want[i].name, want[i].v, want[i].t)
				}
			}
		}
		// LatestReadings.
		latest, err := ts.LatestReadings(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		newest := map[string]modelReading{}
		for _, r := range model {
			newest[r.name] = r // model is sorted: the last wins
		}
		if len(latest) != len(newest) {
			t.Fatalf("%s: latest: %d names, want %d", phase, len(latest), len(newest))
		}
		for _, r := range latest {
			w := newest[r.Name]
			if r.Time.UnixNano() != w.t || *r.Value != w.v {
				t.Fatalf("%s: latest %s: got %v @%d, want %v @%d", phase, r.Name, *r.Value, r.Time.UnixNano(), w.v, w.t)
			}
		}
		// AggregateReadings: counts, min and max per bucket.
		for range 5 {
			name := names[rng.IntN(len(names))]
			from := lo + rng.Int64N(hi-lo+1)
			to := from + 1 + rng.Int64N(hi-from+2)
			size := time.Duration(1+rng.IntN(90)) * time.Minute
			bs, err := ts.AggregateReadings(ctx, pylon.AggregateFilter{DeviceID: dev, Name: name,
				From: time.Unix(0, from), To: time.Unix(0, to), Bucket: size, Agg: pylon.AggMax})
			if err != nil {
				t.Fatal(err)
			}
			type agg struct {
				n   int64
				max float64
			}
			wantB := map[int64]*agg{}
			for _, r := range model {
				if r.name != name || r.t < from || r.t >= to {
					continue
				}
				s := r.t - ((r.t%int64(size))+int64(size))%int64(size)
				a := wantB[s]
				if a == nil {
					a = &agg{max: math.Inf(-1)}
					wantB[s] = a
				}
				a.n++
				a.max = max(a.max, r.v)
			}
			if len(bs) != len(wantB) {
				t.Fatalf("%s: aggregate: %d buckets, want %d", phase, len(bs), len(wantB))
			}
			for _, b := range bs {
				a := wantB[b.Start.UnixNano()]
				if a == nil || a.n != b.Count || a.max != b.Value {
					t.Fatalf("%s: aggregate bucket %v: got %d/%v, want %+v", phase, b.Start, b.Count, b.Value, a)
				}
			}
		}
	}
	check("written")

	// Retention at a random time, possibly inside blocks.
	cut := lo + rng.Int64N(hi-lo+1)
	n, err := ts.DeleteReadingsBefore(ctx, time.Unix(0, cut))
	if err != nil {
		t.Fatal(err)
	}
	kept := model[:0:0]
	for _, r := range model {
		if r.t >= cut {
			kept = append(kept, r)
		}
	}
	if want := int64(len(model) - len(kept)); n != want {
		t.Fatalf("retention: deleted %d, want %d", n, want)
	}
	model = kept
	if len(model) == 0 {
		return
	}
	lo, hi = model[0].t, model[len(model)-1].t
	check("after retention")
}
