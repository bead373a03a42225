package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	const day = 24 * time.Hour
	for _, tt := range []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{"90m", 90 * time.Minute, ""},
		{"720h", 720 * time.Hour, ""},
		{"30d", 30 * day, ""},
		{"0d", 0, ""},
		{"5y", 5 * 365 * day, ""},
		{"1825d", 5 * 365 * day, ""},
		{"1.5d", 0, "whole number"},
		{"-3d", 0, "whole number"},
		{"+3d", 0, "whole number"},
		{"03d", 0, "whole number"},
		{"y", 0, "whole number"},
		{"9999999y", 0, "whole number"}, // past time.Duration's 292 years
		{"3w", 0, "unknown unit"},
		{"", 0, "invalid duration"},
	} {
		got, err := ParseDuration(tt.in)
		switch {
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("ParseDuration(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
		}
	}
}

// TestParseSince takes the forms the readings and audit commands' help
// gives: "2h", "2h ago" and RFC 3339.
func TestParseSince(t *testing.T) {
	now := time.Date(2030, 1, 2, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		in   string
		want time.Time
	}{
		{"2h", now.Add(-2 * time.Hour)},
		{"2h ago", now.Add(-2 * time.Hour)},
		{" 1d ago ", now.Add(-24 * time.Hour)},
		{"2h  ago", now.Add(-2 * time.Hour)},
		{"2030-01-01T00:00:00Z", time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		if got, err := parseSince(tt.in, now); err != nil || !got.Equal(tt.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"ago", "2h from now", "yesterday", "2030-01-01"} {
		if got, err := parseSince(in, now); err == nil {
			t.Errorf("parseSince(%q) = %v; want an error", in, got)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/srv/pylon-data/ca.crt": "/srv/pylon-data/ca.crt",
		"/tmp/my data/ca.crt":    "'/tmp/my data/ca.crt'",
		"/tmp/it's/ca.crt":       `'/tmp/it'\''s/ca.crt'`,
		"$HOME/ca.crt":           "'$HOME/ca.crt'",
		"":                       "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
