package main_test

// Tests of `pylon bench ingest`: short runs against an in-process server
// and a mosquitto broker of the test's own, checking that the summary adds
// up and matches what the server stored. They measure nothing.

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon/httpapi"
)

// ingestSummary is the part of `pylon bench ingest -o json` the tests check.
type ingestSummary struct {
	Broker                      string
	Devices, Inflight, Records  int
	Sent, Acknowledged, Refused int64
	Unanswered, Errors, Lost    int64
	AckedReadings               int64                           `json:"acknowledged_readings"`
	StoredReadings              *int64                          `json:"stored_readings"`
	Delivered                   *int64                          `json:"delivered"`
	MsgsPerSec                  float64                         `json:"msgs_per_sec"`
	PayloadPerMsg               float64                         `json:"payload_bytes_per_msg"`
	Latency                     struct{ P50, P99, Max float64 } `json:"latency_ms"`
	FirstError                  string                          `json:"first_error"`
}

// runBenchIngest runs the pylon binary's `bench ingest -o json` with args.
func runBenchIngest(t *testing.T, env []string, args ...string) ingestSummary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pylonBin, append([]string{"bench", "ingest", "-o", "json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pylon bench ingest %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var s ingestSummary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("summary %q: %v", out, err)
	}
	t.Logf("%s: %+v", strings.Join(args, " "), s)
	return s
}

func TestBenchIngest_Pylon(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	env := []string{
		"PYLON_SERVER=" + p.URL,
		"PYLON_CA=" + filepath.Join(p.Config.Data, "ca.crt"),
		"PYLON_TOKEN_FILE=" + filepath.Join(p.Config.Data, "admin.token"),
	}
	for _, tc := range []struct {
		name    string
		args    []string
		devices int
		msgs    int64
		records int64
	}{
		{"P-256 one reading", []string{"--devices", "3", "-n", "60", "--inflight", "4"}, 3, 60, 1},
		{"Ed25519 50 readings deflate", []string{"--devices", "2", "-n", "20", "--records", "50", "--compress", "deflate", "--key", "ed25519"}, 2, 20, 50},
		{"paced", []string{"--devices", "2", "-n", "40", "--rate", "400", "--inflight", "1"}, 2, 40, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := storedReadings(t, p)
			s := runBenchIngest(t, env, tc.args...)
			if s.Broker != "pylon" || s.Devices != tc.devices || s.Records != int(tc.records) {
				t.Errorf("run: got broker %q, %d devices, %d records, want pylon, %d, %d", s.Broker, s.Devices, s.Records, tc.devices, tc.records)
			}
			if s.Sent != tc.msgs || s.Acknowledged != tc.msgs || s.Refused != 0 || s.Unanswered != 0 || s.Errors != 0 {
				t.Fatalf("messages: got %d sent, %d acknowledged, %d refused, %d unanswered, %d errors (%s), want all %d acknowledged",
					s.Sent, s.Acknowledged, s.Refused, s.Unanswered, s.Errors, s.FirstError, tc.msgs)
			}
			if s.AckedReadings != tc.msgs*tc.records || s.StoredReadings == nil || *s.StoredReadings != s.AckedReadings || s.Lost != 0 {
				t.Fatalf("readings: got %d acknowledged, stored %v, %d lost; want %d, all stored", s.AckedReadings, s.StoredReadings, s.Lost, tc.msgs*tc.records)
			}
			// The store, counted apart from the command.
			if got := storedReadings(t, p) - before; got != s.AckedReadings {
				t.Errorf("readings in the store: got %d new, want the %d acknowledged", got, s.AckedReadings)
			}
			if s.MsgsPerSec <= 0 || s.Latency.P50 <= 0 || s.Latency.Max < s.Latency.P99 || s.PayloadPerMsg <= 0 {
				t.Errorf("figures: got %+v, want positive rate, latency and payload size", s)
			}
		})
	}
}

// storedReadings counts every reading of every device through the API.
func storedReadings(t *testing.T, p *Platform) int64 {
	t.Helper()
	var list httpapi.DeviceList
	if code := p.Do("GET", "/api/v1/devices?limit=100", p.AdminToken, nil, &list); code != 200 || list.NextCursor != "" {
		t.Fatalf("list devices: got status %d (next cursor %q), want 200 and one page", code, list.NextCursor)
	}
	var n int64
	for _, d := range list.Devices {
		n += int64(len(p.Readings(d.ID)))
	}
	return n
}

func TestBenchIngest_Mosquitto(t *testing.T) {
	requireTools(t, "mosquitto")
	addr := startMosquitto(t)
	prof := filepath.Join(t.TempDir(), "cpu.prof")
	s := runBenchIngest(t, nil, "--mosquitto", addr, "--devices", "3", "-n", "300", "--records", "50", "--compress", "zstd", "--cpuprofile", prof)
	if s.Broker != "mosquitto" || s.Sent != 300 || s.Acknowledged != 300 || s.Unanswered != 0 || s.Errors != 0 {
		t.Fatalf("messages: got %+v, want 300 sent and acknowledged", s)
	}
	if s.Delivered == nil || *s.Delivered != s.Acknowledged || s.Lost != 0 {
		t.Fatalf("delivered: got %v of %d acknowledged (%d lost), want all", s.Delivered, s.Acknowledged, s.Lost)
	}
	// A profile is a gzipped protocol buffer, not empty even when the run
	// was too short for a sample: it names the binary's mappings.
	f, err := os.Open(prof)
	if err != nil {
		t.Fatalf("--cpuprofile: %v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("--cpuprofile: %v", err)
	}
	if body, err := io.ReadAll(zr); err != nil || len(body) == 0 {
		t.Fatalf("--cpuprofile: %d bytes after gunzip, %v; want a profile", len(body), err)
	}
}

// startMosquitto runs a mosquitto broker of the test's own on a free
// loopback port and returns its address.
func startMosquitto(t *testing.T) string {
	t.Helper()
	port := freePort(t)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous true\n", port), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("mosquitto", "-c", conf)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto does not listen on %s: %v\n%s", addr, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
