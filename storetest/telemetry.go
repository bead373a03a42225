package storetest

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

// num returns a numeric reading.
func num(name string, t time.Time, v float64) pylon.Reading {
	return pylon.Reading{Name: name, Unit: "Cel", Time: t, Value: &v}
}

// msg returns a message of the device with the given readings, received
// at T0.
func msg(deviceID string, seq uint64, readings ...pylon.Reading) *pylon.TelemetryMessage {
	return &pylon.TelemetryMessage{DeviceID: deviceID, Seq: seq, Received: T0, Readings: readings}
}

// write writes msgs and returns their statuses, failing t on an error.
func write(t testing.TB, s Stores, msgs ...*pylon.TelemetryMessage) []pylon.WriteStatus {
	t.Helper()
	st, err := s.Telemetry.WriteMessages(context.Background(), msgs)
	if err != nil {
		t.Fatalf("write messages: %v", err)
	}
	if len(st) != len(msgs) {
		t.Fatalf("got %d statuses, want %d", len(st), len(msgs))
	}
	return st
}

// statusNames returns the statuses as short words, for messages.
func statusNames(st []pylon.WriteStatus) string {
	names := make([]string, len(st))
	for i, s := range st {
		switch s {
		case pylon.WriteStored:
			names[i] = "stored"
		case pylon.WriteDuplicate:
			names[i] = "duplicate"
		case pylon.WriteReplay:
			names[i] = "replay"
		default:
			names[i] = fmt.Sprint(int(s))
		}
	}
	return strings.Join(names, ",")
}

// allReadings pages through the device's readings with the filter and
// page size, failing on a repeated cursor.
func allReadings(t testing.TB, s Stores, f pylon.ReadingFilter) []*pylon.Reading {
	t.Helper()
	var all []*pylon.Reading
	seen := map[string]bool{}
	for {
		page, next, err := s.Telemetry.FindReadings(context.Background(), f)
		if err != nil {
			t.Fatalf("find readings %+v: %v", f, err)
		}
		if f.Limit > 0 && len(page) > f.Limit {
			t.Fatalf("got a page of %d readings, want at most %d", len(page), f.Limit)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		if seen[next] || len(page) == 0 {
			t.Fatalf("paging does not advance: cursor %q, page of %d", next, len(page))
		}
		seen[next] = true
		f.Cursor = next
	}
}

// values returns the v of each reading.
func values(rs []*pylon.Reading) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		if r.Value == nil {
			out[i] = math.NaN()
			continue
		}
		out[i] = *r.Value
	}
	return out
}

func testTelemetryStatuses(t *testing.T, s Stores) {
	a := createDevice(t, s, "status-a", nil)
	b := createDevice(t, s, "status-b", nil)
	r := func(v float64) pylon.Reading { return num("temp", T0, v) }
	const W = pylon.ReplayWindow

	// Each step writes one batch; the statuses are checked in order.
	steps := []struct {
		name string
		msgs []*pylon.TelemetryMessage
		want string
	}{
		{"new messages", []*pylon.TelemetryMessage{msg(a.ID, 1, r(1)), msg(a.ID, 2, r(2)), msg(b.ID, 1, r(3))}, "stored,stored,stored"},
		{"duplicates across batches", []*pylon.TelemetryMessage{msg(a.ID, 2, r(-1)), msg(b.ID, 1, r(-1)), msg(a.ID, 3, r(4))}, "duplicate,duplicate,stored"},
		{"duplicates in one batch", []*pylon.TelemetryMessage{msg(a.ID, 5, r(5)), msg(b.ID, 5, r(6)), msg(a.ID, 5, r(-1)), msg(a.ID, 5, r(-1))}, "stored,stored,duplicate,duplicate"},
		{"gaps and reordering are fine", []*pylon.TelemetryMessage{msg(a.ID, 100, r(7)), msg(a.ID, 4, r(8))}, "stored,stored"},
		{"jump ahead", []*pylon.TelemetryMessage{msg(a.ID, 10000, r(9))}, "stored"},
		{"just inside the window", []*pylon.TelemetryMessage{msg(a.ID, 10000-W, r(10))}, "stored"},
		{"just outside the window", []*pylon.TelemetryMessage{msg(a.ID, 10000-W-1, r(-1))}, "replay"},
		{"duplicate before replay", []*pylon.TelemetryMessage{msg(a.ID, 1, r(-1)), msg(a.ID, 100, r(-1))}, "duplicate,duplicate"},
		{"other device unaffected", []*pylon.TelemetryMessage{msg(b.ID, 2, r(11))}, "stored"},
		{"window moves within a batch", []*pylon.TelemetryMessage{msg(b.ID, 20000, r(12)), msg(b.ID, 20000-W-1, r(-1)), msg(b.ID, 20000-W, r(13))}, "stored,replay,stored"},
		{"message without readings", []*pylon.TelemetryMessage{msg(a.ID, 10001), msg(a.ID, 10001)}, "stored,duplicate"},
		{"unknown device", []*pylon.TelemetryMessage{msg("nosuchdevice2345", 1, r(-1)), msg(a.ID, 10002, r(14))}, "replay,stored"},
		{"seq beyond int64", []*pylon.TelemetryMessage{msg(a.ID, math.MaxInt64+1, r(-1)), msg(a.ID, math.MaxUint64, r(-1))}, "replay,replay"},
		{"largest seq", []*pylon.TelemetryMessage{msg(b.ID, math.MaxInt64, r(15))}, "stored"},
		{"below the largest seq", []*pylon.TelemetryMessage{msg(b.ID, math.MaxInt64-W, r(16)), msg(b.ID, 20001, r(-1))}, "stored,replay"},
	}
	for _, step := range steps {
		if got := statusNames(write(t, s, step.msgs...)); got != step.want {
			t.Fatalf("%s: got statuses %s, want %s", step.name, got, step.want)
		}
	}
	if st, err := s.Telemetry.WriteMessages(context.Background(), nil); err != nil || len(st) != 0 {
		t.Fatalf("empty batch: got %v, %v; want no statuses", st, err)
	}

	// Only the stored messages' readings are there, once each; values
	// -1 belong to refused messages.
	for _, tc := range []struct {
		device string
		want   []float64
	}{
		{a.ID, []float64{1, 2, 4, 5, 7, 8, 9, 10, 14}},
		{b.ID, []float64{3, 6, 11, 12, 13, 15, 16}},
	} {
		got := values(allReadings(t, s, pylon.ReadingFilter{DeviceID: tc.device}))
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Fatalf("device %s: got values %v, want %v", tc.device, got, tc.want)
		}
	}
}

func testTelemetryValidation(t *testing.T, s Stores) {
	d := createDevice(t, s, "validation", nil)
	ok := num("temp", T0, 1)
	tooMany := make([]pylon.Reading, pylon.MaxReadingsPerMessage+1)
	for i := range tooMany {
		tooMany[i] = ok
	}
	tests := []struct {
		name string
		msg  *pylon.TelemetryMessage
		code string
	}{
		{"nil message", nil, pylon.EINVALID},
		{"no device", msg("", 1, ok), pylon.EINVALID},
		{"too many readings", msg(d.ID, 1, tooMany...), pylon.ETOOLARGE},
		{"no name", msg(d.ID, 1, num("", T0, 1)), pylon.EINVALID},
		{"long name", msg(d.ID, 1, num(strings.Repeat("n", pylon.MaxSenMLNameLen+1), T0, 1)), pylon.EINVALID},
		{"long string", msg(d.ID, 1, pylon.Reading{Name: "s", Time: T0, StringValue: ptr(strings.Repeat("s", pylon.MaxStringValueLen+1))}), pylon.EINVALID},
		{"long data", msg(d.ID, 1, pylon.Reading{Name: "d", Time: T0, DataValue: make([]byte, pylon.MaxDataValueLen+1)}), pylon.EINVALID},
		{"NaN", msg(d.ID, 1, num("temp", T0, math.NaN())), pylon.EINVALID},
		{"no value", msg(d.ID, 1, pylon.Reading{Name: "temp", Time: T0}), pylon.EINVALID},
		{"other device's reading", msg(d.ID, 1, pylon.Reading{DeviceID: "otherdevice23456", Name: "temp", Time: T0, Value: ptr(1.0)}), pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A good message in the same batch is not written either.
			_, err := s.Telemetry.WriteMessages(context.Background(), []*pylon.TelemetryMessage{msg(d.ID, 1, ok), tt.msg})
			wantCode(t, err, tt.code)
		})
	}
	if got := allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID}); len(got) != 0 {
		t.Fatalf("got %d readings after refused batches, want 0", len(got))
	}
	if got := statusNames(write(t, s, msg(d.ID, 1, ok))); got != "stored" {
		t.Fatalf("got %s, want stored: refused batches must not record their messages", got)
	}
}

// sameReading fails t unless got and want agree on every field, floats
// bit for bit.
func sameReading(t testing.TB, got, want *pylon.Reading) {
	t.Helper()
	fbits := func(p *float64) string {
		if p == nil {
			return "nil"
		}
		return fmt.Sprintf("%#x", math.Float64bits(*p))
	}
	sval := func(p *string) string {
		if p == nil {
			return "nil"
		}
		return fmt.Sprintf("%q", *p)
	}
	bval := func(p *bool) string {
		if p == nil {
			return "nil"
		}
		return fmt.Sprint(*p)
	}
	switch {
	case got.DeviceID != want.DeviceID || got.Name != want.Name || got.Unit != want.Unit:
		t.Fatalf("got device %q name %q unit %q, want %q %q %q", got.DeviceID, got.Name, got.Unit, want.DeviceID, want.Name, want.Unit)
	case !got.Time.Equal(want.Time):
		t.Fatalf("%s: got time %v, want %v", want.Name, got.Time, want.Time)
	case fbits(got.Value) != fbits(want.Value):
		t.Fatalf("%s: got v %s, want %s", want.Name, fbits(got.Value), fbits(want.Value))
	case sval(got.StringValue) != sval(want.StringValue):
		t.Fatalf("%s: got vs %s, want %s", want.Name, sval(got.StringValue), sval(want.StringValue))
	case bval(got.BoolValue) != bval(want.BoolValue):
		t.Fatalf("%s: got vb %s, want %s", want.Name, bval(got.BoolValue), bval(want.BoolValue))
	case (got.DataValue == nil) != (want.DataValue == nil) || !bytes.Equal(got.DataValue, want.DataValue):
		t.Fatalf("%s: got vd %x (nil %v), want %x (nil %v)", want.Name, got.DataValue, got.DataValue == nil, want.DataValue, want.DataValue == nil)
	case fbits(got.Sum) != fbits(want.Sum):
		t.Fatalf("%s: got s %s, want %s", want.Name, fbits(got.Sum), fbits(want.Sum))
	}
}

func testTelemetryRoundTrip(t *testing.T, s Stores) {
	d := createDevice(t, s, "roundtrip", nil)
	big := make([]byte, pylon.MaxDataValueLen)
	for i := range big {
		big[i] = byte(i * 7)
	}
	tm := func(i int) time.Time { return T0.Add(time.Duration(i) * time.Second) }
	want := []pylon.Reading{
		{Name: "f/tenth", Unit: "m", Time: tm(0), Value: ptr(0.1)},
		{Name: "f/negzero", Time: tm(1), Value: ptr(math.Copysign(0, -1))},
		{Name: "f/zero", Time: tm(2), Value: ptr(0.0)},
		{Name: "f/max", Time: tm(3), Value: ptr(math.MaxFloat64)},
		{Name: "f/tiny", Time: tm(4), Value: ptr(math.SmallestNonzeroFloat64)},
		{Name: "f/third", Time: tm(5), Value: ptr(-1.0 / 3)},
		{Name: "f/integral", Unit: "count", Time: tm(6), Value: ptr(3.0)},
		{Name: "f/2^53+2", Time: tm(7), Value: ptr(float64(1<<53 + 2))},
		{Name: "f/inf", Time: tm(8), Value: ptr(math.Inf(-1))},
		{Name: "s/unicode", Time: tm(9), StringValue: ptr("température ✓ 😀 Ω")},
		{Name: "s/empty", Time: tm(10), StringValue: ptr("")},
		{Name: "s/long", Time: tm(11), StringValue: ptr(strings.Repeat("é", pylon.MaxStringValueLen/2))},
		{Name: "b/true", Time: tm(12), BoolValue: ptr(true)},
		{Name: "b/false", Time: tm(13), BoolValue: ptr(false)},
		{Name: "d/bytes", Time: tm(14), DataValue: []byte{0, 1, 0xfe, 0xff}},
		{Name: "d/empty", Time: tm(15), DataValue: []byte{}},
		{Name: "d/max", Time: tm(16), DataValue: big},
		{Name: "sum/only", Unit: "J", Time: tm(17), Sum: ptr(1234.5678)},
		{Name: "sum/and-value", Unit: "J", Time: tm(18), Value: ptr(-7.25), Sum: ptr(1e300)},
		{Name: "t/nanos", Time: time.Date(2030, 1, 2, 3, 4, 5, 999999999, time.UTC), Value: ptr(1.0)},
		{Name: "t/other-zone", Time: time.Date(2030, 1, 2, 3, 4, 5, 1, time.FixedZone("X", 3600)), Value: ptr(2.0)},
		{Name: "n/" + strings.Repeat("x", pylon.MaxSenMLNameLen-2), Time: tm(19), Value: ptr(4.0)},
	}
	if got := statusNames(write(t, s, msg(d.ID, 1, want...))); got != "stored" {
		t.Fatalf("got %s, want stored", got)
	}
	got, _, err := s.Telemetry.FindReadings(context.Background(), pylon.ReadingFilter{DeviceID: d.ID, Limit: 100})
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d readings, want %d", len(got), len(want))
	}
	byName := map[string]*pylon.Reading{}
	for _, r := range got {
		byName[r.Name] = r
		if r.Time.Location() != time.UTC {
			t.Fatalf("%s: got time in %v, want UTC", r.Name, r.Time.Location())
		}
	}
	for i := range want {
		w := want[i]
		w.DeviceID = d.ID
		r, ok := byName[w.Name]
		if !ok {
			t.Fatalf("reading %s missing", w.Name)
		}
		sameReading(t, r, &w)
	}

	// The latest readings carry the same values.
	latest, err := s.Telemetry.LatestReadings(context.Background(), d.ID)
	if err != nil {
		t.Fatalf("latest: %v", err)
	}
	if len(latest) != len(want) {
		t.Fatalf("got %d latest readings, want %d", len(latest), len(want))
	}
	for _, r := range latest {
		sameReading(t, r, byName[r.Name])
	}
}

// testTelemetryStorageOrder: readings of one series at one time come back
// in the order they were sent, also when numbers and other kinds of value
// alternate (a store may write the kinds apart), and across messages.
func testTelemetryStorageOrder(t *testing.T, s Stores) {
	d := createDevice(t, s, "order", nil)
	var sent []pylon.Reading
	for i := range 12 {
		r := pylon.Reading{Name: "mixed", Unit: "W", Time: T0}
		switch i % 4 {
		case 0, 1:
			r.Value = ptr(float64(i))
		case 2:
			r.StringValue = ptr(fmt.Sprint(i))
		case 3:
			r.Value, r.Sum = ptr(float64(i)), ptr(float64(i))
		}
		sent = append(sent, r)
	}
	write(t, s, msg(d.ID, 1, sent[:7]...), msg(d.ID, 2, sent[7:]...))
	for _, desc := range []bool{false, true} {
		got := allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID, Desc: desc, Limit: 5})
		if len(got) != len(sent) {
			t.Fatalf("desc %v: got %d readings, want %d", desc, len(got), len(sent))
		}
		for i, r := range got {
			want := sent[i]
			if desc {
				want = sent[len(sent)-1-i]
			}
			want.DeviceID = d.ID
			sameReading(t, r, &want)
		}
	}
}

func testTelemetryFindReadings(t *testing.T, s Stores) {
	const n = 2500
	a := createDevice(t, s, "find-a", nil)
	b := createDevice(t, s, "find-b", nil)
	names := []string{"temp", "humidity", "door"}
	// Reading i has value i, name names[i%3] and time base + (i/2) ms:
	// pairs of readings share a time, so order among equal times matters.
	base := T0.Truncate(time.Second)
	at := func(i int) time.Time { return base.Add(time.Duration(i/2) * time.Millisecond) }
	var msgs []*pylon.TelemetryMessage
	for i := 0; i < n; i += 50 {
		var rs []pylon.Reading
		for j := i; j < i+50; j++ {
			rs = append(rs, num(names[j%3], at(j), float64(j)))
		}
		msgs = append(msgs, msg(a.ID, uint64(i+1), rs...))
		msgs = append(msgs, msg(b.ID, uint64(i+1), num("temp", at(i), -1)))
	}
	// Write in shuffled batches: store order is not time order.
	slices.Reverse(msgs[:len(msgs)/2])
	for batch := range slices.Chunk(msgs, 16) {
		write(t, s, batch...)
	}

	// want returns the values i for which keep is true, in time order.
	want := func(keep func(i int) bool, desc bool) []float64 {
		var out []float64
		for i := range n {
			if keep(i) {
				out = append(out, float64(i))
			}
		}
		if desc {
			slices.Reverse(out)
		}
		return out
	}
	// byTime sorts the values within each run of equal times (given by
	// timeOf): the order of readings with one time is not specified.
	byTime := func(vs []float64, timeOf func(k int) time.Time) []float64 {
		for i := 0; i < len(vs); {
			j := i
			for j < len(vs) && timeOf(j).Equal(timeOf(i)) {
				j++
			}
			slices.Sort(vs[i:j])
			i = j
		}
		return vs
	}
	from, to := at(500), at(1500) // readings 500 to 1499
	tests := []struct {
		name   string
		filter pylon.ReadingFilter
		keep   func(i int) bool
	}{
		{"all ascending", pylon.ReadingFilter{DeviceID: a.ID, Limit: 100}, func(i int) bool { return true }},
		{"all descending", pylon.ReadingFilter{DeviceID: a.ID, Limit: 100, Desc: true}, func(i int) bool { return true }},
		{"odd page size", pylon.ReadingFilter{DeviceID: a.ID, Limit: 7}, func(i int) bool { return true }},
		{"default page size", pylon.ReadingFilter{DeviceID: a.ID}, func(i int) bool { return true }},
		{"by name", pylon.ReadingFilter{DeviceID: a.ID, Name: "humidity", Limit: 99}, func(i int) bool { return i%3 == 1 }},
		{"by name descending", pylon.ReadingFilter{DeviceID: a.ID, Name: "door", Limit: 64, Desc: true}, func(i int) bool { return i%3 == 2 }},
		{"from inclusive, to exclusive", pylon.ReadingFilter{DeviceID: a.ID, From: &from, To: &to, Limit: 111}, func(i int) bool { return i >= 500 && i < 1500 }},
		{"range descending", pylon.ReadingFilter{DeviceID: a.ID, From: &from, To: &to, Limit: 111, Desc: true}, func(i int) bool { return i >= 500 && i < 1500 }},
		{"range and name", pylon.ReadingFilter{DeviceID: a.ID, Name: "temp", From: &from, Limit: 50}, func(i int) bool { return i >= 500 && i%3 == 0 }},
		{"only to", pylon.ReadingFilter{DeviceID: a.ID, To: &from, Limit: 1000, Desc: true}, func(i int) bool { return i < 500 }},
		{"empty range", pylon.ReadingFilter{DeviceID: a.ID, From: &to, To: &from}, func(i int) bool { return false }},
		{"unknown name", pylon.ReadingFilter{DeviceID: a.ID, Name: "nope"}, func(i int) bool { return false }},
		{"unknown device", pylon.ReadingFilter{DeviceID: "nosuchdevice2345"}, func(i int) bool { return false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := allReadings(t, s, tt.filter)
			for k := 1; k < len(got); k++ {
				prev, cur := got[k-1].Time, got[k].Time
				if !tt.filter.Desc && cur.Before(prev) || tt.filter.Desc && cur.After(prev) {
					t.Fatalf("reading %d at %v after %v: out of order", k, cur, prev)
				}
			}
			for _, r := range got {
				if r.DeviceID != tt.filter.DeviceID || (tt.filter.Name != "" && r.Name != tt.filter.Name) {
					t.Fatalf("got reading of %s/%s, want only %s/%s", r.DeviceID, r.Name, tt.filter.DeviceID, tt.filter.Name)
				}
				if want := names[int(*r.Value)%3]; r.Name != want {
					t.Fatalf("reading %v: got name %s, want %s", *r.Value, r.Name, want)
				}
			}
			gotV := byTime(values(got), func(k int) time.Time { return got[k].Time })
			w := want(tt.keep, tt.filter.Desc)
			w = byTime(w, func(k int) time.Time { return at(int(w[k])) })
			if !slices.Equal(gotV, w) {
				t.Fatalf("got %d readings, want %d, no duplicates and none missing; got first %v, want %v",
					len(gotV), len(w), head(gotV), head(w))
			}
		})
	}

	// Page sizes.
	ctx := context.Background()
	page, next, err := s.Telemetry.FindReadings(ctx, pylon.ReadingFilter{DeviceID: a.ID})
	if err != nil || len(page) != 1000 || next == "" {
		t.Fatalf("default limit: got %d readings, next %q, err %v; want 1000 and a cursor", len(page), next, err)
	}
	page, next, err = s.Telemetry.FindReadings(ctx, pylon.ReadingFilter{DeviceID: a.ID, Limit: 5000})
	if err != nil || len(page) != n || next != "" {
		t.Fatalf("limit 5000: got %d readings, next %q, err %v; want all %d on one page", len(page), next, err, n)
	}

	// Bad cursors.
	_, asc, err := s.Telemetry.FindReadings(ctx, pylon.ReadingFilter{DeviceID: a.ID, Limit: 10})
	if err != nil || asc == "" {
		t.Fatalf("first page: next %q, err %v", asc, err)
	}
	for name, f := range map[string]pylon.ReadingFilter{
		"garbage":          {DeviceID: a.ID, Cursor: "not a cursor!"},
		"long":             {DeviceID: a.ID, Cursor: strings.Repeat("A", 500)},
		"other direction":  {DeviceID: a.ID, Cursor: asc, Desc: true},
		"device cursor":    {DeviceID: a.ID, Cursor: "ZAAAAAAAAAAB"},
		"truncated cursor": {DeviceID: a.ID, Cursor: asc[:len(asc)-2]},
	} {
		t.Run("bad cursor "+name, func(t *testing.T) {
			_, _, err := s.Telemetry.FindReadings(ctx, f)
			wantCode(t, err, pylon.EINVALID)
		})
	}
	_, _, err = s.Telemetry.FindReadings(ctx, pylon.ReadingFilter{})
	wantCode(t, err, pylon.EINVALID)
}

// head returns the first few values of vs.
func head(vs []float64) []float64 { return vs[:min(len(vs), 6)] }

func testTelemetryLatest(t *testing.T, s Stores) {
	a := createDevice(t, s, "latest-a", nil)
	b := createDevice(t, s, "latest-b", nil)
	ctx := context.Background()
	if got, err := s.Telemetry.LatestReadings(ctx, a.ID); err != nil || len(got) != 0 {
		t.Fatalf("no readings: got %d, %v; want none", len(got), err)
	}
	t1, t2, t3 := T0, T0.Add(time.Second), T0.Add(2*time.Second)
	write(t, s,
		msg(a.ID, 1, num("temp", t1, 1), num("humidity", t2, 40), pylon.Reading{Name: "door", Time: t1, BoolValue: ptr(false)}),
		msg(b.ID, 1, num("temp", t3.Add(time.Hour), 99)),
	)
	write(t, s, msg(a.ID, 2, num("temp", t3, 3), pylon.Reading{Name: "door", Time: t2, BoolValue: ptr(true)}))
	// A late message with older readings does not replace newer ones.
	write(t, s, msg(a.ID, 3, num("temp", t2, 2), num("humidity", t1, 30)))

	got, err := s.Telemetry.LatestReadings(ctx, a.ID)
	if err != nil {
		t.Fatalf("latest: %v", err)
	}
	slices.SortFunc(got, func(x, y *pylon.Reading) int { return strings.Compare(x.Name, y.Name) })
	want := []pylon.Reading{
		{DeviceID: a.ID, Name: "door", Time: t2, BoolValue: ptr(true)},
		{DeviceID: a.ID, Name: "humidity", Unit: "Cel", Time: t2, Value: ptr(40.0)},
		{DeviceID: a.ID, Name: "temp", Unit: "Cel", Time: t3, Value: ptr(3.0)},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d latest readings, want %d", len(got), len(want))
	}
	for i := range want {
		sameReading(t, got[i], &want[i])
	}
	if got, err := s.Telemetry.LatestReadings(ctx, "nosuchdevice2345"); err != nil || len(got) != 0 {
		t.Fatalf("unknown device: got %d, %v; want none", len(got), err)
	}
}

func testTelemetryAggregates(t *testing.T, s Stores) {
	a := createDevice(t, s, "agg-a", nil)
	b := createDevice(t, s, "agg-b", nil)
	ctx := context.Background()
	// A minute-aligned base; buckets of one minute.
	base := T0.Truncate(time.Hour)
	at := func(min, sec int) time.Time {
		return base.Add(time.Duration(min)*time.Minute + time.Duration(sec)*time.Second)
	}
	write(t, s,
		msg(a.ID, 1,
			num("temp", at(0, 0), 1), num("temp", at(0, 30), 2), num("temp", at(0, 59), 6), // bucket 0: avg 3
			num("temp", at(2, 10), -4), num("temp", at(2, 20), 4.5), // bucket 2: avg 0.25; bucket 1 empty
			num("temp", at(3, 0), 8),
			pylon.Reading{Name: "temp", Time: at(0, 10), StringValue: ptr("not a number")},
			pylon.Reading{Name: "temp", Time: at(0, 11), BoolValue: ptr(true)},
			pylon.Reading{Name: "temp", Time: at(0, 12), Sum: ptr(1000.0)},
			num("other", at(0, 1), 1000),
		),
		msg(b.ID, 1, num("temp", at(0, 1), 1000)),
	)
	type bucket struct {
		start time.Time
		value float64
		count int64
	}
	tests := []struct {
		name   string
		filter pylon.AggregateFilter
		want   []bucket
	}{
		{"avg", pylon.AggregateFilter{Agg: pylon.AggAvg, From: at(0, 0), To: at(4, 0), Bucket: time.Minute},
			[]bucket{{at(0, 0), 3, 3}, {at(2, 0), 0.25, 2}, {at(3, 0), 8, 1}}},
		{"min", pylon.AggregateFilter{Agg: pylon.AggMin, From: at(0, 0), To: at(4, 0), Bucket: time.Minute},
			[]bucket{{at(0, 0), 1, 3}, {at(2, 0), -4, 2}, {at(3, 0), 8, 1}}},
		{"max", pylon.AggregateFilter{Agg: pylon.AggMax, From: at(0, 0), To: at(4, 0), Bucket: time.Minute},
			[]bucket{{at(0, 0), 6, 3}, {at(2, 0), 4.5, 2}, {at(3, 0), 8, 1}}},
		{"count", pylon.AggregateFilter{Agg: pylon.AggCount, From: at(0, 0), To: at(4, 0), Bucket: time.Minute},
			[]bucket{{at(0, 0), 3, 3}, {at(2, 0), 2, 2}, {at(3, 0), 1, 1}}},
		{"from inclusive, to exclusive", pylon.AggregateFilter{Agg: pylon.AggCount, From: at(0, 30), To: at(3, 0), Bucket: time.Minute},
			[]bucket{{at(0, 0), 2, 2}, {at(2, 0), 2, 2}}},
		{"one big bucket", pylon.AggregateFilter{Agg: pylon.AggAvg, From: at(0, 0), To: at(4, 0), Bucket: time.Hour},
			[]bucket{{at(0, 0), 17.5 / 6, 6}}},
		// base is a multiple of 45 s since the epoch (3600 s is), so
		// buckets start at base + k·45 s, also before from.
		{"buckets aligned to the epoch, not to from", pylon.AggregateFilter{Agg: pylon.AggCount, From: at(0, 20), To: at(2, 15), Bucket: 45 * time.Second},
			[]bucket{{at(0, 0), 1, 1}, {at(0, 45), 1, 1}, {at(1, 30), 1, 1}}},
		{"unknown name", pylon.AggregateFilter{Agg: pylon.AggAvg, Name: "nope", From: at(0, 0), To: at(4, 0), Bucket: time.Minute}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.filter
			f.DeviceID = a.ID
			if f.Name == "" {
				f.Name = "temp"
			}
			got, err := s.Telemetry.AggregateReadings(ctx, f)
			if err != nil {
				t.Fatalf("aggregate: %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d buckets, want %d: %v", len(got), len(tt.want), got)
			}
			for i, w := range tt.want {
				g := got[i]
				if !g.Start.Equal(w.start) || g.Value != w.value || g.Count != w.count {
					t.Fatalf("bucket %d: got {%v %v %d}, want {%v %v %d}", i, g.Start, g.Value, g.Count, w.start, w.value, w.count)
				}
			}
		})
	}

	invalid := []struct {
		name   string
		filter pylon.AggregateFilter
	}{
		{"bad aggregation", pylon.AggregateFilter{Agg: "median", From: at(0, 0), To: at(1, 0), Bucket: time.Minute}},
		{"no aggregation", pylon.AggregateFilter{From: at(0, 0), To: at(1, 0), Bucket: time.Minute}},
		{"bucket under a second", pylon.AggregateFilter{Agg: pylon.AggAvg, From: at(0, 0), To: at(1, 0), Bucket: time.Second - 1}},
		{"to equals from", pylon.AggregateFilter{Agg: pylon.AggAvg, From: at(1, 0), To: at(1, 0), Bucket: time.Minute}},
		{"to before from", pylon.AggregateFilter{Agg: pylon.AggAvg, From: at(1, 0), To: at(0, 0), Bucket: time.Minute}},
		{"too many buckets", pylon.AggregateFilter{Agg: pylon.AggAvg, From: at(0, 0), To: at(0, 0).Add(100_001 * time.Second), Bucket: time.Second}},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.filter
			f.DeviceID, f.Name = a.ID, "temp"
			_, err := s.Telemetry.AggregateReadings(ctx, f)
			wantCode(t, err, pylon.EINVALID)
		})
	}
	// The most buckets allowed.
	if _, err := s.Telemetry.AggregateReadings(ctx, pylon.AggregateFilter{DeviceID: a.ID, Name: "temp", Agg: pylon.AggAvg,
		From: at(0, 0), To: at(0, 0).Add(100_000 * time.Second), Bucket: time.Second}); err != nil {
		t.Fatalf("100000 buckets: %v", err)
	}
}

func testTelemetryRetention(t *testing.T, s Stores) {
	d := createDevice(t, s, "retention", nil)
	ctx := context.Background()
	old, recent := T0.Add(-2*time.Hour), T0.Add(-time.Minute)
	m := func(seq uint64, received time.Time, rs ...pylon.Reading) *pylon.TelemetryMessage {
		return &pylon.TelemetryMessage{DeviceID: d.ID, Seq: seq, Received: received, Readings: rs}
	}
	write(t, s,
		m(1, old, num("temp", old, 1), num("humidity", old, 2)),
		m(2, old, num("temp", old.Add(time.Second), 3)),
		m(5, old, num("temp", recent, 4)), // an old message with a recent reading
	)
	n, err := s.Telemetry.DeleteReadingsBefore(ctx, T0.Add(-time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("got %d deleted, %v; want 3", n, err)
	}
	if got := values(allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID})); !slices.Equal(got, []float64{4}) {
		t.Fatalf("got values %v after retention, want [4]", got)
	}
	// Seq 1 and 2 are forgotten; the newest (5) is not, so that the
	// device's replay window survives.
	if got := statusNames(write(t, s, m(2, T0, num("temp", T0, 5)), m(5, T0, num("temp", T0, -1)))); got != "stored,duplicate" {
		t.Fatalf("after retention: got %s, want stored,duplicate", got)
	}
	if n, err := s.Telemetry.DeleteReadingsBefore(ctx, T0.Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("second retention: got %d, %v; want 0", n, err)
	}
	latest, err := s.Telemetry.LatestReadings(ctx, d.ID)
	if err != nil || len(latest) != 1 || latest[0].Name != "temp" || *latest[0].Value != 5 {
		t.Fatalf("got latest %v, %v; want only temp = 5", latest, err)
	}
}

func testTelemetryQuarantine(t *testing.T, s Stores) {
	a := createDevice(t, s, "quarantine-a", nil)
	b := createDevice(t, s, "quarantine-b", nil)
	ctx := context.Background()
	var all []*pylon.QuarantinedMessage
	for i, dev := range []string{a.ID, b.ID, a.ID, a.ID, b.ID} {
		m := &pylon.QuarantinedMessage{DeviceID: dev, Received: T0.Add(time.Duration(i) * time.Second), Reason: fmt.Sprintf("bad %d: ✗", i),
			Code: []string{"invalid", "unauthorized", "too_large"}[i%3], Seq: []uint64{0, 7, math.MaxUint64}[i%3], Payload: []byte{byte(i), 0, 0xff}}
		if err := s.Telemetry.QuarantineMessage(ctx, m); err != nil {
			t.Fatalf("quarantine %d: %v", i, err)
		}
		if m.ID == 0 {
			t.Fatalf("quarantine %d: got no ID", i)
		}
		all = append(all, m)
	}
	slices.Reverse(all) // newest first
	same := func(t *testing.T, got, want []*pylon.QuarantinedMessage) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("got %d messages, want %d", len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			if g.ID != w.ID || g.DeviceID != w.DeviceID || !g.Received.Equal(w.Received) || g.Reason != w.Reason || g.Code != w.Code || g.Seq != w.Seq || !bytes.Equal(g.Payload, w.Payload) {
				t.Fatalf("message %d: got %+v, want %+v", i, *g, *w)
			}
		}
	}
	tests := []struct {
		name   string
		device string
		limit  int
		want   []*pylon.QuarantinedMessage
	}{
		{"all", "", 0, all},
		{"limit", "", 2, all[:2]},
		{"device a", a.ID, 0, []*pylon.QuarantinedMessage{all[1], all[2], all[4]}},
		{"device b", b.ID, 1, all[:1]},
		{"unknown device", "nosuchdevice2345", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Telemetry.FindQuarantine(ctx, tt.device, tt.limit)
			if err != nil {
				t.Fatalf("find: %v", err)
			}
			same(t, got, tt.want)
		})
	}

	// The payload is capped at MaxQuarantinePayload; a zero time becomes now.
	big := bytes.Repeat([]byte{0xab}, 100<<10)
	m := &pylon.QuarantinedMessage{DeviceID: a.ID, Reason: "too large", Payload: big}
	if err := s.Telemetry.QuarantineMessage(ctx, m); err != nil {
		t.Fatalf("quarantine big: %v", err)
	}
	got, err := s.Telemetry.FindQuarantine(ctx, a.ID, 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("find big: %v", err)
	}
	if len(got[0].Payload) != pylon.MaxQuarantinePayload || !bytes.Equal(got[0].Payload, big[:pylon.MaxQuarantinePayload]) {
		t.Fatalf("got payload of %d bytes, want the first %d", len(got[0].Payload), pylon.MaxQuarantinePayload)
	}
	if !got[0].Received.Equal(T0) {
		t.Fatalf("got received %v, want now (%v)", got[0].Received, T0)
	}

	wantCode(t, s.Telemetry.QuarantineMessage(ctx, &pylon.QuarantinedMessage{DeviceID: "nosuchdevice2345", Reason: "x"}), pylon.ENOTFOUND)
	wantCode(t, s.Telemetry.QuarantineMessage(ctx, &pylon.QuarantinedMessage{Reason: "x"}), pylon.EINVALID)
}

func testTelemetryDeleteDevice(t *testing.T, s Stores) {
	a := createDevice(t, s, "delete-a", nil)
	b := createDevice(t, s, "delete-b", nil)
	ctx := context.Background()
	for seq := uint64(1); seq <= 3; seq++ {
		write(t, s, msg(a.ID, seq, num("temp", T0, float64(seq))), msg(b.ID, seq, num("temp", T0, float64(seq))))
	}
	for _, dev := range []string{a.ID, b.ID} {
		if err := s.Telemetry.QuarantineMessage(ctx, &pylon.QuarantinedMessage{DeviceID: dev, Reason: "x"}); err != nil {
			t.Fatalf("quarantine: %v", err)
		}
	}
	if err := s.Devices.DeleteDevice(adminCtx(), a.ID); err != nil {
		t.Fatalf("delete device: %v", err)
	}
	if got := allReadings(t, s, pylon.ReadingFilter{DeviceID: a.ID}); len(got) != 0 {
		t.Fatalf("got %d readings of the deleted device, want 0", len(got))
	}
	if got, err := s.Telemetry.LatestReadings(ctx, a.ID); err != nil || len(got) != 0 {
		t.Fatalf("got %d latest readings of the deleted device (%v), want 0", len(got), err)
	}
	if got, err := s.Telemetry.FindQuarantine(ctx, a.ID, 0); err != nil || len(got) != 0 {
		t.Fatalf("got %d quarantined messages of the deleted device (%v), want 0", len(got), err)
	}
	// A message of the deleted device still in flight is refused; the
	// other device's in the same batch is stored.
	if got := statusNames(write(t, s, msg(a.ID, 4, num("temp", T0, 4)), msg(b.ID, 4, num("temp", T0, 4)))); got != "replay,stored" {
		t.Fatalf("after delete: got %s, want replay,stored", got)
	}
	if got := allReadings(t, s, pylon.ReadingFilter{DeviceID: b.ID}); len(got) != 4 {
		t.Fatalf("got %d readings of the other device, want 4", len(got))
	}
	if got, err := s.Telemetry.FindQuarantine(ctx, b.ID, 0); err != nil || len(got) != 1 {
		t.Fatalf("got %d quarantined messages of the other device (%v), want 1", len(got), err)
	}
}

func testTelemetryConcurrent(t *testing.T, s Stores) {
	if s.NoConcurrency {
		t.Skip("store does not serve concurrent callers")
	}
	const (
		writers = 4
		batches = 20
	)
	devs := make([]*pylon.Device, writers)
	for i := range devs {
		devs[i] = createDevice(t, s, fmt.Sprintf("concurrent-%d", i), nil)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers)
	for w := range writers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range batches {
				// Each writer's batch has its own device's message and a
				// duplicate of its neighbour's (which may or may not be
				// stored yet).
				seq := uint64(i + 1)
				other := devs[(w+1)%writers].ID
				st, err := s.Telemetry.WriteMessages(ctx, []*pylon.TelemetryMessage{
					msg(devs[w].ID, seq, num("temp", T0.Add(time.Duration(i)*time.Second), float64(i))),
					msg(other, seq, num("temp", T0.Add(time.Duration(i)*time.Second), float64(i))),
				})
				if err != nil {
					errs <- err
					return
				}
				if st[1] != pylon.WriteStored && st[1] != pylon.WriteDuplicate || st[0] != pylon.WriteStored && st[0] != pylon.WriteDuplicate {
					errs <- fmt.Errorf("got statuses %s", statusNames(st))
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range batches {
				if _, _, err := s.Telemetry.FindReadings(ctx, pylon.ReadingFilter{DeviceID: devs[w].ID}); err != nil {
					errs <- err
					return
				}
				if _, err := s.Telemetry.LatestReadings(ctx, devs[w].ID); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent use: %v", err)
	}
	// Every (device, seq) stored exactly once.
	for _, d := range devs {
		got := values(allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID}))
		if len(got) != batches {
			t.Fatalf("device %s: got %d readings, want %d (each message once)", d.Name, len(got), batches)
		}
	}
}

// testTelemetryInterleavedMessages: messages whose readings of one series
// interleave in time, arrive out of order, share times, or spread over
// days (a device uploading what it kept offline) read back in time order,
// then in the order stored, by every page size, in both directions, from
// any point, in ranges, and with the newest as the latest.
func testTelemetryInterleavedMessages(t *testing.T, s Stores) {
	d := createDevice(t, s, "interleaved", nil)
	type sent struct {
		r     pylon.Reading
		order int // place in the order stored
	}
	var all []sent
	at := func(seq uint64, offsets ...time.Duration) *pylon.TelemetryMessage {
		m := msg(d.ID, seq)
		for _, o := range offsets {
			v := float64(len(all))
			r := pylon.Reading{Name: "x", Unit: "W", Time: T0.Add(o), Value: &v}
			m.Readings = append(m.Readings, r)
			all = append(all, sent{r, len(all)})
		}
		return m
	}
	h := time.Hour
	write(t, s,
		// A message over three days, its readings out of order.
		at(1, 50*h, 0, 2*h, 72*h, 30*time.Minute, 3*h),
		// Its neighbours in time, and readings at its times.
		at(2, time.Minute, 2*time.Minute, 2*h, 2*h),
		at(3, 71*h, 72*h, 73*h),
	)
	// Many small messages later, also between the others' readings.
	for i := range 40 {
		write(t, s, at(uint64(4+i), time.Duration(i)*90*time.Minute, time.Duration(i)*90*time.Minute+time.Second))
	}
	write(t, s, at(100, 0)) // the earliest time again, stored last
	want := slices.Clone(all)
	slices.SortStableFunc(want, func(a, b sent) int { return a.r.Time.Compare(b.r.Time) })
	check := func(what string, got []*pylon.Reading, want []sent) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: got %d readings, want %d", what, len(got), len(want))
		}
		for i, r := range got {
			if !r.Time.Equal(want[i].r.Time) || *r.Value != float64(want[i].order) {
				t.Fatalf("%s: reading %d is %v at %v, want %d at %v", what, i, *r.Value, r.Time, want[i].order, want[i].r.Time)
			}
		}
	}
	reversed := slices.Clone(want)
	slices.Reverse(reversed)
	for _, limit := range []int{1, 2, 3, 7, 1000} {
		check(fmt.Sprintf("ascending by %d", limit), allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID, Limit: limit}), want)
		check(fmt.Sprintf("descending by %d", limit), allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID, Limit: limit, Desc: true}), reversed)
	}
	// Ranges that start and end inside the wide message's span.
	for _, r := range [][2]time.Duration{{time.Minute, 3 * h}, {2 * h, 2*h + 1}, {49 * h, 72*h + 1}, {0, time.Nanosecond}} {
		from, to := T0.Add(r[0]), T0.Add(r[1])
		var in []sent
		for _, w := range want {
			if !w.r.Time.Before(from) && w.r.Time.Before(to) {
				in = append(in, w)
			}
		}
		check(fmt.Sprintf("ascending in [%v, %v)", r[0], r[1]), allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID, From: &from, To: &to, Limit: 2}), in)
		slices.Reverse(in)
		check(fmt.Sprintf("descending in [%v, %v)", r[0], r[1]), allReadings(t, s, pylon.ReadingFilter{DeviceID: d.ID, From: &from, To: &to, Limit: 2, Desc: true}), in)
	}
	latest, err := s.Telemetry.LatestReadings(context.Background(), d.ID)
	if err != nil || len(latest) != 1 {
		t.Fatalf("latest: got %v, %v; want one reading", latest, err)
	}
	check("latest", latest, reversed[:1])
	// Counted once each, whatever block holds them.
	buckets, err := s.Telemetry.AggregateReadings(context.Background(), pylon.AggregateFilter{
		DeviceID: d.ID, Name: "x", From: T0, To: T0.Add(100 * h), Bucket: 24 * h, Agg: pylon.AggCount})
	if err != nil {
		t.Fatalf("aggregate: %v", err)
	}
	var n int64
	for _, b := range buckets {
		n += b.Count
	}
	if n != int64(len(all)) {
		t.Fatalf("aggregate: counted %d readings, want %d", n, len(all))
	}
}

// testTelemetryManyDevicesInBatch: one batch with messages of 150
// devices (more than a store may look up at once), some of them
// duplicates, some of unknown devices, decides each message as alone.
func testTelemetryManyDevicesInBatch(t *testing.T, s Stores) {
	var devs []string
	for i := range 150 {
		devs = append(devs, createDevice(t, s, fmt.Sprintf("many-%d", i), nil).ID)
	}
	var first, second []*pylon.TelemetryMessage
	var want []string
	for i, d := range devs {
		first = append(first, msg(d, 1, num("temp", T0, float64(i))))
		second = append(second, msg(d, uint64(1+i%2), num("temp", T0.Add(time.Second), float64(i))))
		want = append(want, map[int]string{0: "duplicate", 1: "stored"}[i%2])
		if i%50 == 0 {
			second = append(second, msg(fmt.Sprintf("nosuchdevice%04d", i), 1, num("temp", T0, 0)))
			want = append(want, "replay")
		}
	}
	if got := statusNames(write(t, s, first...)); got != strings.TrimSuffix(strings.Repeat("stored,", len(devs)), ",") {
		t.Fatalf("first batch: got %s", got)
	}
	if got := statusNames(write(t, s, second...)); got != strings.Join(want, ",") {
		t.Fatalf("second batch: got %s, want %s", got, strings.Join(want, ","))
	}
	for i, d := range devs {
		if got := allReadings(t, s, pylon.ReadingFilter{DeviceID: d}); len(got) != 1+i%2 {
			t.Fatalf("device %d: got %d readings, want %d", i, len(got), 1+i%2)
		}
	}
}
