package main_test

// Tests of `pylon bench enroll`: short runs against an in-process server,
// checking that every reported enrollment is a real one the server
// recorded. They measure nothing.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// enrollSummary is the part of `pylon bench enroll -o json` the tests check.
type enrollSummary struct {
	Enrollments, Failed, Concurrency int
	Kex                              string
	PerSecond                        float64  `json:"per_second"`
	ClientCPU                        *float64 `json:"client_cpu_s"`
	ServerCPU                        *float64 `json:"server_cpu_s"`
	FirstError                       string   `json:"first_error"`
}

// runBenchEnroll runs the pylon binary's `bench enroll -o json` with args
// and returns its summary, or the error and its output.
func runBenchEnroll(t *testing.T, env []string, args ...string) (enrollSummary, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pylonBin, append([]string{"bench", "enroll", "-o", "json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return enrollSummary{}, stderr.String(), err
	}
	var s enrollSummary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("summary %q: %v", out, err)
	}
	return s, stderr.String(), nil
}

func TestBenchEnroll(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	env := []string{
		"PYLON_SERVER=" + p.URL,
		"PYLON_CA=" + filepath.Join(p.Config.Data, "ca.crt"),
		"PYLON_TOKEN_FILE=" + filepath.Join(p.Config.Data, "admin.token"),
	}
	total := 0
	for _, kex := range []string{"default", "x25519", "p256"} {
		t.Run(kex, func(t *testing.T) {
			const n = 24
			s, stderr, err := runBenchEnroll(t, env, "-n", "24", "-concurrency", "4", "-kex", kex)
			if err != nil {
				t.Fatalf("bench enroll: %v\n%s", err, stderr)
			}
			if s.Enrollments != n || s.Failed != 0 || s.FirstError != "" || s.Concurrency != 4 || s.Kex != kex || s.PerSecond <= 0 {
				t.Fatalf("got %+v, want %d enrollments, none failed", s, n)
			}
			if s.ClientCPU == nil || s.ServerCPU == nil {
				t.Errorf("got no CPU figures (client %v, server %v), want both on Linux with an admin token", s.ClientCPU, s.ServerCPU)
			}
			total += n
		})
	}

	// Every enrollment the tool counted created an active device with a
	// recorded certificate.
	var devs struct {
		Devices []struct {
			ID     string            `json:"id"`
			State  string            `json:"state"`
			Labels map[string]string `json:"labels"`
		} `json:"devices"`
	}
	if code := p.Do("GET", "/api/v1/devices?limit=200", p.AdminToken, nil, &devs); code != 200 {
		t.Fatalf("list devices: status %d", code)
	}
	enrolled := 0
	for _, d := range devs.Devices {
		if d.Labels["bench"] == "" {
			continue
		}
		enrolled++
		if d.State != "active" {
			t.Errorf("device %s is %s, want active", d.ID, d.State)
		}
		var page struct{ Certificates []struct{ Serial string } }
		if code := p.Do("GET", "/api/v1/devices/"+d.ID+"/certificates", p.AdminToken, nil, &page); code != 200 || len(page.Certificates) != 1 {
			t.Errorf("device %s: got %d certificates (status %d), want 1", d.ID, len(page.Certificates), code)
		}
	}
	if enrolled != total {
		t.Errorf("got %d bench devices, want %d", enrolled, total)
	}
}
