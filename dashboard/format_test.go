package dashboard_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/dashboard"
)

func TestRelTime(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		t    time.Time
		want string
	}{
		{"zero", time.Time{}, "never"},
		{"now", now, "just now"},
		{"seconds", now.Add(-42 * time.Second), "42 s ago"},
		{"minutes", now.Add(-5*time.Minute - 10*time.Second), "5 min ago"},
		{"hours", now.Add(-30 * time.Hour), "30 h ago"},
		{"days", now.Add(-72 * time.Hour), "3 days ago"},
		{"future", now.Add(23 * time.Hour), "in 23 h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dashboard.RelTime(tt.t, now); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestExpiryText(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tests := []struct {
		name string
		in   time.Duration
		want string
	}{
		{"30-day certificate, just issued", 30*day - time.Minute, "in 30 days"},
		{"one day", day + time.Hour, "in 1 day"},
		{"hours", 5 * time.Hour, "in less than a day"},
		{"just expired", -time.Hour, "expired today"},
		{"long expired", -10 * day, "expired 10 days ago"},
		{"a day ago", -day, "expired 1 day ago"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dashboard.ExpiryText(now.Add(tt.in), now); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFormatNumber(t *testing.T) {
	tests := []struct {
		name string
		v    float64
		want string
	}{
		{"zero", 0, "0"},
		{"integer", 42, "42"},
		{"decimal", 21.5, "21.5"},
		{"negative", -3.25, "-3.25"},
		{"six significant digits", 3.14159265, "3.14159"},
		{"four digits, no separator", 1013.25, "1013.25"},
		{"thousands", 12345.678, "12,345.7"},
		{"millions", 1234567.891, "1,234,570"},
		{"negative thousands", -98765.4, "-98,765.4"},
		{"small", 0.00125, "0.00125"},
		{"tiny", 0.0000123, "1.23e-05"},
		{"huge", 6.02e23, "6.02e+23"},
		{"rounding up a digit", 999999.7, "1,000,000"},
		{"NaN", math.NaN(), "NaN"},
		{"infinity", math.Inf(-1), "−∞"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dashboard.FormatNumber(tt.v); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadingText(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	s := func(v string) *string { return &v }
	b := func(v bool) *bool { return &v }
	tests := []struct {
		name string
		r    pylon.Reading
		want string
	}{
		{"celsius", pylon.Reading{Unit: "Cel", Value: f(21.5)}, "21.5 °C"},
		{"humidity", pylon.Reading{Unit: "%RH", Value: f(45)}, "45% RH"},
		{"ratio", pylon.Reading{Unit: "/", Value: f(0.5)}, "0.5"},
		{"watts", pylon.Reading{Unit: "W", Value: f(1500)}, "1500 W"},
		{"unknown unit as sent", pylon.Reading{Unit: "furlong", Value: f(2)}, "2 furlong"},
		{"latitude", pylon.Reading{Unit: "lat", Value: f(48.8566)}, "48.8566°"},
		{"string", pylon.Reading{StringValue: s("ok")}, "ok"},
		{"string with control characters", pylon.Reading{StringValue: s("a\x1bb\nc")}, "a\uFFFDb\uFFFDc"},
		{"long string", pylon.Reading{StringValue: s(strings.Repeat("x", 300))}, strings.Repeat("x", 200) + "…"},
		{"bool", pylon.Reading{BoolValue: b(false)}, "false"},
		{"data", pylon.Reading{DataValue: []byte{1}}, "1 byte of data"},
		{"value and sum", pylon.Reading{Unit: "Wh", Value: f(5), Sum: f(12000)}, "5 Wh (sum 12,000 Wh)"},
		{"sum only", pylon.Reading{Unit: "Wh", Sum: f(7)}, "sum 7 Wh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dashboard.ReadingText(&tt.r); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFormatRate(t *testing.T) {
	tests := []struct {
		r    float64
		want string
	}{
		{0, "0"}, {0.01, "< 0.1"}, {0.3, "0.3"}, {12.345, "12.3"}, {99.94, "99.9"}, {1234.4, "1234"}, {12345.6, "12,346"},
	}
	for _, tt := range tests {
		if got := dashboard.FormatRate(tt.r); got != tt.want {
			t.Errorf("FormatRate(%v): got %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestDetailsText(t *testing.T) {
	tests := []struct {
		name, raw, want string
	}{
		{"empty", "", ""},
		{"escapes undone", `{"name":"\u003cscript\u003e\u0026","n":12345678901234567890}`, `{"n":12345678901234567890,"name":"<script>&"}`},
		{"not json", `{"a":`, `{"a":`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dashboard.DetailsText([]byte(tt.raw)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
