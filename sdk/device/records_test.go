package device_test

import (
	"math"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

func TestEncode_ResolvesAsThePlatformDoes(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 250_000_000, time.UTC)
	abs := float64(now.Add(-time.Hour).Unix())
	tests := []struct {
		name string
		recs []senml.Record
		want []pylon.Reading // Name, Unit, Time, Value or StringValue
	}{
		{"no time is the time of publishing", []senml.Record{{Name: "temp", Unit: "Cel", Value: device.Float(21.5)}},
			[]pylon.Reading{{Name: "temp", Unit: "Cel", Time: now, Value: device.Float(21.5)}}},
		{"relative time is from publishing", []senml.Record{{Name: "temp", Value: device.Float(1), Time: -30}},
			[]pylon.Reading{{Name: "temp", Time: now.Add(-30 * time.Second), Value: device.Float(1)}}},
		{"absolute time kept", []senml.Record{{Name: "temp", Value: device.Float(1), Time: abs}},
			[]pylon.Reading{{Name: "temp", Time: now.Add(-time.Hour).Truncate(time.Second), Value: device.Float(1)}}},
		{"base fields resolved and carried", []senml.Record{
			{BaseName: "room/", BaseUnit: "Cel", BaseValue: 20, BaseTime: abs, Name: "a", Value: device.Float(1)},
			{Name: "b", Value: device.Float(2), Time: 5},
			{Name: "c", Unit: "%RH", Value: device.Float(40)}},
			[]pylon.Reading{
				{Name: "room/a", Unit: "Cel", Time: time.Unix(int64(abs), 0).UTC(), Value: device.Float(21)},
				{Name: "room/b", Unit: "Cel", Time: time.Unix(int64(abs)+5, 0).UTC(), Value: device.Float(22)},
				{Name: "room/c", Unit: "%RH", Time: time.Unix(int64(abs), 0).UTC(), Value: device.Float(60)}}},
		{"mixed prefixes", []senml.Record{{Name: "sys/uptime", Unit: "s", Value: device.Float(5)}, {Name: "temp", StringValue: device.String("x")}},
			[]pylon.Reading{{Name: "sys/uptime", Unit: "s", Time: now, Value: device.Float(5)}, {Name: "temp", Time: now, StringValue: device.String("x")}}},
	}
	for _, ct := range []int{envelope.ContentTypeSenMLCBOR, envelope.ContentTypeSenMLJSON} {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				pack, err := device.EncodeForTest(tt.recs, now, ct)
				if err != nil {
					t.Fatal(err)
				}
				got, err := senml.Decode("dev", ct, pack, now.Add(time.Minute), senml.Limits{})
				if err != nil {
					t.Fatalf("platform decode of %q: %v", pack, err)
				}
				if len(got) != len(tt.want) {
					t.Fatalf("got %d readings, want %d", len(got), len(tt.want))
				}
				for i, w := range tt.want {
					g := got[i]
					if g.Name != w.Name || g.Unit != w.Unit || !g.Time.Equal(w.Time) {
						t.Errorf("reading %d: got %s %q at %v, want %s %q at %v", i, g.Name, g.Unit, g.Time, w.Name, w.Unit, w.Time)
					}
					if (w.Value != nil) != (g.Value != nil) || w.Value != nil && math.Abs(*g.Value-*w.Value) > 1e-9 {
						t.Errorf("reading %d: got value %v, want %v", i, g.Value, w.Value)
					}
					if (w.StringValue != nil) != (g.StringValue != nil) || w.StringValue != nil && *g.StringValue != *w.StringValue {
						t.Errorf("reading %d: got vs %v, want %v", i, g.StringValue, w.StringValue)
					}
				}
			})
		}
	}
}

func TestEncode_RefusesWhatThePlatformRefuses(t *testing.T) {
	long := string(make([]byte, pylon.MaxStringValueLen+1))
	tests := map[string]senml.Record{
		"unknown unit":    {Name: "t", Unit: "furlong", Value: device.Float(1)},
		"dBm is no unit":  {Name: "t", Unit: "dBm", Value: device.Float(1)},
		"bad name":        {Name: "-t", Value: device.Float(1)},
		"space in name":   {Name: "a b", Value: device.Float(1)},
		"empty name":      {Value: device.Float(1)},
		"two values":      {Name: "t", Value: device.Float(1), BoolValue: device.Bool(true)},
		"no value":        {Name: "t"},
		"NaN":             {Name: "t", Value: device.Float(math.NaN())},
		"infinite":        {Name: "t", Value: device.Float(math.Inf(1))},
		"long vs":         {Name: "t", StringValue: &long},
		"invalid UTF-8":   {Name: "t", StringValue: device.String("\xff")},
		"long data value": {Name: "t", DataValue: make([]byte, pylon.MaxDataValueLen+1)},
	}
	for name, rec := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := device.EncodeForTest([]senml.Record{rec}, time.Now(), envelope.ContentTypeSenMLCBOR)
			if got := pylon.ErrorCode(err); got != pylon.EINVALID {
				t.Fatalf("got %v (code %q), want an EINVALID error", err, got)
			}
		})
	}
	if _, err := device.EncodeForTest(make([]senml.Record, pylon.MaxReadingsPerMessage+1), time.Now(), 0); pylon.ErrorCode(err) != pylon.EINVALID {
		t.Fatalf("too many records: got %v, want EINVALID", err)
	}
}

func TestHealthRecords_ValidSenML(t *testing.T) {
	now := time.Now()
	recs := device.HealthRecordsForTest(90*time.Second, "1.4.2", device.Health{Battery: device.Float(87), RSSI: device.Float(-71), FreeMemory: device.Float(20480)})
	pack, err := device.EncodeForTest(recs, now, envelope.ContentTypeSenMLCBOR)
	if err != nil {
		t.Fatal(err)
	}
	got, err := senml.Decode("dev", envelope.ContentTypeSenMLCBOR, pack, now, senml.Limits{})
	if err != nil {
		t.Fatalf("platform refuses the heartbeat: %v", err)
	}
	want := map[string]string{"sys/uptime": "s", "sys/firmware": "", "sys/battery": "%EL", "sys/rssi": "dB", "sys/mem_free": "B"}
	if len(got) != len(want) {
		t.Fatalf("got %d readings, want %d", len(got), len(want))
	}
	for _, r := range got {
		unit, ok := want[r.Name]
		if !ok || r.Unit != unit {
			t.Errorf("got %s in %q, want one of %v", r.Name, r.Unit, want)
		}
		if r.Name == "sys/uptime" && *r.Value != 90 {
			t.Errorf("uptime: got %v, want 90", *r.Value)
		}
		if r.Name == "sys/firmware" && *r.StringValue != "1.4.2" {
			t.Errorf("firmware: got %q, want 1.4.2", *r.StringValue)
		}
	}
}
