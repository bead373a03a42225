package main_test

// End-to-end tests of the real binary with stock tools: curl, openssl and
// mosquitto_pub, exactly as docs/protocol.md and the README tell users to.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pylonhq/pylon/pki"
)

var pylonBin string // built once by TestMain

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pylon-bin-")
	if err != nil {
		panic(err)
	}
	pylonBin = filepath.Join(dir, "pylon")
	if out, err := exec.Command("go", "build", "-o", pylonBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build pylon: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			// scripts/test-deps.sh installs them; CI runs it first.
			t.Fatalf("%s not found: run scripts/test-deps.sh", tool)
		}
	}
}

// binServer is `pylon serve` running as a process.
type binServer struct {
	cmd               *exec.Cmd
	data, api         string
	apiPort, mqttPort int
	stdout, stderr    *syncBuffer
}

// syncBuffer is a bytes.Buffer that the server process writes to while the
// test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startBinary(t *testing.T, data string) *binServer {
	t.Helper()
	return startServe(t, data, freePort(t), freePort(t))
}

// stop sends SIGTERM and returns the exit code.
func (s *binServer) stop(t *testing.T) int {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("server did not exit within 15s of SIGTERM")
	}
	return s.cmd.ProcessState.ExitCode()
}

// sh runs a shell command with the CLI environment pointing at s and
// returns its combined output, failing the test on error.
func (s *binServer) sh(t *testing.T, script string) string {
	t.Helper()
	out, err := s.shErr(script)
	if err != nil {
		t.Fatalf("%s\n%v\n%s", script, err, out)
	}
	return out
}

func (s *binServer) shErr(script string) (string, error) {
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = filepath.Dir(s.data)
	cmd.Env = append(os.Environ(),
		"PYLON="+pylonBin, "API="+s.api, fmt.Sprintf("MQTT_PORT=%d", s.mqttPort),
		"PYLON_SERVER="+s.api,
		"PYLON_CA="+filepath.Join(s.data, "ca.crt"),
		"PYLON_TOKEN_FILE="+filepath.Join(s.data, "admin.token"),
		"EXAMPLES="+mustAbs("../../examples"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

// TestBinary_ServeFirstStart starts the binary on an empty data directory
// and checks what a first start must give: healthz, the admin token printed
// once and kept in its file, 401 without it and 200 with it, and a clean
// exit on SIGTERM. How fast healthz answers is measured, not asserted here
// (docs/benchmarks.md, "Start-up"): a loaded CI machine must not fail it.
func TestBinary_ServeFirstStart(t *testing.T) {
	requireTools(t, "curl")
	data := filepath.Join(t.TempDir(), "d")
	start := time.Now()
	s := startBinary(t, data)
	var out string
	for {
		o, err := s.shErr(`curl -sS -o /dev/null -w '%{http_code}' --cacert "$PYLON_CA" "$API/healthz"`)
		if err == nil && o == "200" {
			out = o
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("healthz not 200 30s after start: %v %s\n%s", err, o, s.stderr)
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Logf("healthz %s after %v", out, time.Since(start))
	token := strings.TrimSpace(s.sh(t, `cat "$PYLON_TOKEN_FILE"`))
	if !strings.Contains(s.stdout.String(), token) {
		t.Error("the admin token was not printed on first start")
	}
	if got := s.sh(t, `curl -sS -o /dev/null -w '%{http_code}' --cacert "$PYLON_CA" "$API/api/v1/devices"`); got != "401" {
		t.Errorf("devices without token: got %s, want 401", got)
	}
	if got := s.sh(t, `curl -sS -o /dev/null -w '%{http_code}' --cacert "$PYLON_CA" -H "Authorization: Bearer $(cat "$PYLON_TOKEN_FILE")" "$API/api/v1/devices"`); got != "200" {
		t.Errorf("devices with admin.token: got %s, want 200", got)
	}
	if code := s.stop(t); code != 0 {
		t.Fatalf("exit code after SIGTERM: got %d, want 0", code)
	}
	if strings.Contains(s.stderr.String(), token) {
		t.Error("the admin token appears in the log")
	}
}

func TestBinary_ShellDeviceEnrollRenewPublish(t *testing.T) {
	requireTools(t, "curl", "openssl", "mosquitto_pub", "base64")
	data := filepath.Join(t.TempDir(), "d")
	s := startBinary(t, data)
	waitHealthy(t, s)

	// Register, make a token, enroll with openssl+curl only (examples/shell/enroll.sh).
	var dev struct{ ID string }
	mustJSON(t, s.sh(t, `$PYLON devices create shell-1 --label kind=shell -o json`), &dev)
	var tok struct{ Token string }
	mustJSON(t, s.sh(t, `$PYLON tokens create --device `+dev.ID+` -o json`), &tok)
	out := s.sh(t, `"$EXAMPLES/shell/enroll.sh" "$API" "$PYLON_CA" '`+tok.Token+`' dev1`)
	if !strings.Contains(out, "enrolled device "+dev.ID) {
		t.Fatalf("enroll.sh: got %q", out)
	}
	// The token was single use.
	if _, err := s.shErr(`"$EXAMPLES/shell/enroll.sh" "$API" "$PYLON_CA" '` + tok.Token + `' dev2`); err == nil {
		t.Fatal("a used enrollment token enrolled again")
	}

	pub := `mosquitto_pub --cafile dev1/ca.crt --cert dev1/device.crt --key dev1/device.key -h localhost -p $MQTT_PORT -i ` + dev.ID + ` -q 1 -V mqttv5 `
	s.sh(t, pub+`-t devices/`+dev.ID+`/status -m hello`)

	// Renewal with a new key over mutual TLS, then publish with the new certificate.
	oldSerial := s.sh(t, `openssl x509 -in dev1/device.crt -noout -serial`)
	out = s.sh(t, `"$EXAMPLES/shell/renew.sh" "$API" dev1`)
	if !strings.Contains(out, "renewed") || s.sh(t, `openssl x509 -in dev1/device.crt -noout -serial`) == oldSerial {
		t.Fatalf("renew.sh: got %q", out)
	}
	s.sh(t, pub+`-t devices/`+dev.ID+`/status -m renewed`)

	// Suspended: the broker refuses the device.
	s.sh(t, `$PYLON devices suspend `+dev.ID)
	if out, err := s.shErr(pub + `-t devices/` + dev.ID + `/status -m nope`); err == nil {
		t.Fatalf("mosquitto_pub succeeded for a suspended device: %s", out)
	}
	s.sh(t, `$PYLON devices resume `+dev.ID)
	s.sh(t, pub+`-t devices/`+dev.ID+`/status -m back`)

	// Revoke the certificate: refused again, and the CRL lists it.
	serial := strings.TrimPrefix(strings.TrimSpace(s.sh(t, `openssl x509 -in dev1/device.crt -noout -serial`)), "serial=")
	s.sh(t, `$PYLON certs revoke `+strings.ToLower(strings.TrimLeft(serial, "0")))
	if _, err := s.shErr(pub + `-t devices/` + dev.ID + `/status -m revoked`); err == nil {
		t.Fatal("mosquitto_pub succeeded with a revoked certificate")
	}
	crl := s.sh(t, `curl -sS --cacert "$PYLON_CA" "$API/api/v1/ca/crl" | openssl crl -inform DER -noout -text`)
	if !strings.Contains(crl, strings.TrimLeft(serial, "0")) {
		t.Fatalf("CRL does not list %s:\n%s", serial, crl)
	}

	// Delete a device with a valid certificate: the certificate stays on
	// the CRL, for external brokers.
	var dev2 struct{ ID string }
	mustJSON(t, s.sh(t, `$PYLON devices create shell-2 -o json`), &dev2)
	// This time with the command that `tokens create` prints, as printed.
	var hint string
	for _, line := range strings.Split(s.sh(t, `$PYLON tokens create --device `+dev2.ID), "\n") {
		if cmd, ok := strings.CutPrefix(line, "  examples/shell/enroll.sh "); ok {
			hint = cmd
		}
	}
	if !strings.HasSuffix(hint, " DIR") {
		t.Fatalf("tokens create: no enroll.sh line ending in DIR, got %q", hint)
	}
	s.sh(t, `"$EXAMPLES/shell/enroll.sh" `+strings.TrimSuffix(hint, "DIR")+`dev3`)
	serial2 := strings.TrimPrefix(strings.TrimSpace(s.sh(t, `openssl x509 -in dev3/device.crt -noout -serial`)), "serial=")
	if out := s.sh(t, `$PYLON devices delete `+dev2.ID+` 2>&1`); !strings.Contains(out, "certificates are revoked") {
		t.Errorf("devices delete: got %q, want it to say the certificates are revoked", out)
	}
	crl = s.sh(t, `curl -sS --cacert "$PYLON_CA" "$API/api/v1/ca/crl" | openssl crl -inform DER -noout -text`)
	if !strings.Contains(crl, strings.TrimLeft(serial2, "0")) {
		t.Fatalf("CRL does not list %s of the deleted device:\n%s", serial2, crl)
	}

	// The audit chain holds and the CLI says so.
	if out := s.sh(t, `$PYLON audit verify`); !strings.Contains(out, "OK") {
		t.Fatalf("audit verify: %s", out)
	}
}

func waitHealthy(t *testing.T, s *binServer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if o, err := s.shErr(`curl -sS -o /dev/null -w '%{http_code}' --cacert "$PYLON_CA" "$API/healthz"`); err == nil && o == "200" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not healthy:\n%s", s.stderr)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

func TestBinary_FleetTokenAndRoles(t *testing.T) {
	requireTools(t, "curl", "openssl", "base64")
	data := filepath.Join(t.TempDir(), "d")
	s := startBinary(t, data)
	waitHealthy(t, s)

	// A fleet token: each use creates a device named from the CSR's CN.
	var tok struct{ Token, ID string }
	mustJSON(t, s.sh(t, `$PYLON tokens create --label site=plant-7 --uses 2 --ttl 1h -o json`), &tok)
	for _, serial := range []string{"SN-0001", "SN-0002"} {
		out := s.sh(t, `"$EXAMPLES/shell/enroll.sh" "$API" "$PYLON_CA" '`+tok.Token+`' `+serial+` `+serial)
		if !strings.Contains(out, "enrolled device") {
			t.Fatalf("enroll %s: %s", serial, out)
		}
	}
	if out, err := s.shErr(`"$EXAMPLES/shell/enroll.sh" "$API" "$PYLON_CA" '` + tok.Token + `' SN-0003 SN-0003`); err == nil {
		t.Fatalf("a fleet token with 2 uses enrolled a third device: %s", out)
	}
	var list struct {
		Devices []struct{ Name, State string }
	}
	mustJSON(t, s.sh(t, `$PYLON devices list --label site=plant-7 -o json`), &list)
	if len(list.Devices) != 2 || list.Devices[0].State != "active" {
		t.Fatalf("fleet devices: got %+v, want 2 active", list.Devices)
	}
	if out := s.sh(t, `$PYLON devices get SN-0002`); !strings.Contains(out, "active") {
		t.Fatalf("get by name: %s", out)
	}
	s.sh(t, `$PYLON tokens revoke `+tok.ID)
	// --uses 0 is refused rather than read as the default of 1.
	if out, err := s.shErr(`$PYLON tokens create --label site=plant-7 --uses 0`); err == nil || !strings.Contains(out, "--uses must be at least 1") {
		t.Fatalf("tokens create --uses 0: got %v, %q; want a usage error", err, out)
	}

	// A viewer token reads but cannot change anything.
	var viewer struct{ Token string }
	mustJSON(t, s.sh(t, `$PYLON api-tokens create dashboard-reader --role viewer -o json`), &viewer)
	s.sh(t, `PYLON_TOKEN='`+viewer.Token+`' $PYLON devices list`)
	out, err := s.shErr(`PYLON_TOKEN='` + viewer.Token + `' $PYLON devices create nope`)
	if err == nil || !strings.Contains(out, "forbidden") {
		t.Fatalf("viewer created a device: %v %s", err, out)
	}
	if out, err := s.shErr(`PYLON_TOKEN='` + viewer.Token + `' $PYLON api-tokens list`); err == nil {
		t.Fatalf("viewer listed API tokens: %s", out)
	}
	// Revoked: refused at once.
	var list2 struct {
		APITokens []struct{ ID, Name string } `json:"api_tokens"`
	}
	mustJSON(t, s.sh(t, `$PYLON api-tokens list -o json`), &list2)
	for _, at := range list2.APITokens {
		if at.Name == "dashboard-reader" {
			s.sh(t, `$PYLON api-tokens revoke `+at.ID)
		}
	}
	if out, err := s.shErr(`PYLON_TOKEN='` + viewer.Token + `' $PYLON devices list`); err == nil || !strings.Contains(out, "unauthorized") {
		t.Fatalf("revoked token still works: %v %s", err, out)
	}
	// Every step is in the audit log, and the chain holds.
	audit := s.sh(t, `$PYLON audit list --limit 1000`)
	for _, action := range []string{"enrollment_token.create", "enrollment_token.use", "certificate.issue", "device.create", "enrollment_token.revoke", "api_token.create", "api_token.revoke", "auth.failed"} {
		if !strings.Contains(audit, action) {
			t.Errorf("audit log has no %s record", action)
		}
	}
	if out := s.sh(t, `$PYLON audit verify`); !strings.Contains(out, "OK") {
		t.Fatalf("audit verify: %s", out)
	}
}

// TestBinary_CheckConfig: serve --check-config refuses what serve would
// refuse at start (listeners, the data directory's keys), and creates
// nothing.
func TestBinary_CheckConfig(t *testing.T) {
	ca := t.TempDir()
	if _, _, err := pki.LoadOrCreateCA(ca, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(ca, "ca.key"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		data string // default: a new empty directory
		args []string
		want string // in the error; "" for OK
	}{
		{"defaults", "", nil, ""},
		{"free ports", "", []string{"--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"}, ""},
		{"service name", "", []string{"--api-addr", ":https"}, ""},
		{"port out of range", "", []string{"--api-addr", "127.0.0.1:99999"}, "api-addr"},
		{"API and MQTT on one port", "", []string{"--api-addr", "127.0.0.1:7000", "--mqtt-addr", "127.0.0.1:7000"}, "api-addr and mqtt-addr"},
		{"all addresses and one on a port", "", []string{"--mqtt-addr", ":7001", "--mqtt-plain-addr", "127.0.0.1:7001"}, "mqtt-addr and mqtt-plain-addr"},
		{"two hosts on a port", "", []string{"--api-addr", "127.0.0.1:7002", "--mqtt-addr", "127.0.0.2:7002"}, ""},
		{"localhost and 127.0.0.1", "", []string{"--api-addr", "localhost:7003", "--mqtt-addr", "127.0.0.1:7003"}, "api-addr and mqtt-addr"},
		{"a mapped IPv4 address", "", []string{"--api-addr", "127.0.0.1:7004", "--mqtt-addr", "[::ffff:127.0.0.1]:7004"}, "api-addr and mqtt-addr"},
		{"integrations on the API's port", "", []string{"--api-addr", ":7005", "--mqtt-integration-addr", "127.0.0.1:7005"}, "api-addr and mqtt-integration-addr"},
		{"a readable CA key", ca, nil, "chmod 600"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.data
			if data == "" {
				data = filepath.Join(t.TempDir(), "d")
			}
			out, err := exec.Command(pylonBin, append([]string{"serve", "--check-config", "--data", data}, tt.args...)...).CombinedOutput()
			switch {
			case tt.want == "" && (err != nil || !strings.Contains(string(out), "configuration OK")):
				t.Fatalf("got %v: %s; want configuration OK", err, out)
			case tt.want != "" && (err == nil || !strings.Contains(string(out), tt.want)):
				t.Fatalf("got %v: %s; want an error with %q", err, out, tt.want)
			}
			if tt.data == "" {
				if _, err := os.Stat(data); !os.IsNotExist(err) {
					t.Errorf("--check-config created the data directory (%v)", err)
				}
			}
		})
	}
}

// TestBinary_HeapFloor: serve raises GOGC above the default while its
// live heap is small (internal/heapfloor), unless GOGC is set, as
// docs/operations.md says; /metrics shows the setting.
func TestBinary_HeapFloor(t *testing.T) {
	requireTools(t, "curl")
	gogc := func(s *binServer) float64 {
		out := s.sh(t, `curl -sS --cacert "$PYLON_CA" -H "Authorization: Bearer $(cat "$PYLON_TOKEN_FILE")" "$API/metrics"`)
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "go_gc_gogc_percent "); ok {
				var f float64
				fmt.Sscan(v, &f)
				return f
			}
		}
		t.Fatalf("no go_gc_gogc_percent in /metrics")
		return 0
	}
	t.Run("default", func(t *testing.T) {
		s := startBinary(t, filepath.Join(t.TempDir(), "d"))
		waitHealthy(t, s)
		// Raised after a collection; scraping allocates, so one comes.
		for deadline := time.Now().Add(10 * time.Second); gogc(s) <= 100; {
			if time.Now().After(deadline) {
				t.Fatalf("GOGC stayed at %v, want it raised above 100", gogc(s))
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("GOGC set", func(t *testing.T) {
		t.Setenv("GOGC", "150")
		s := startBinary(t, filepath.Join(t.TempDir(), "d"))
		waitHealthy(t, s)
		for range 20 {
			if got := gogc(s); got != 150 {
				t.Fatalf("GOGC: got %v, want the environment's 150", got)
			}
		}
	})
}
