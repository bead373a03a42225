package main_test

// End-to-end tests: the whole platform in-process on random ports, driven
// over HTTPS and MQTT over mutual TLS as a real client would.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/pylonhq/pylon"
	main "github.com/pylonhq/pylon/cmd/pylon"
	"github.com/pylonhq/pylon/est"
)

// Platform is a running server for a test.
type Platform struct {
	*main.Main
	t      testing.TB
	URL    string
	Client *http.Client // trusts the platform CA
}

// MustRunMain starts a platform with its data in dir.
func MustRunMain(tb testing.TB, dir string) *Platform {
	tb.Helper()
	m := main.NewMain()
	m.Config.Data = dir
	m.Config.APIAddr = "127.0.0.1:0"
	m.Config.MQTTAddr = "127.0.0.1:0"
	m.Logger = slog.New(slog.NewTextHandler(testWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m.Stdout = io.Discard
	if err := m.Run(context.Background()); err != nil {
		tb.Fatalf("run: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &Platform{
		Main: m, t: tb,
		URL:    "https://" + m.HTTP.ListenAddr().String(),
		Client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Do sends a request with the admin token (token "" sends none) and decodes
// a JSON answer into out if it is non-nil. It returns the status.
func (p *Platform) Do(method, path, token string, body any, out any) int {
	p.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		buf, _ := json.Marshal(b)
		r = bytes.NewReader(buf)
	}
	req, _ := http.NewRequest(method, p.URL+path, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			p.t.Fatalf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type device struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	State  string            `json:"state"`
	Online bool              `json:"online"`
	Labels map[string]string `json:"labels"`
}

// CreateDevice registers a device and returns it.
func (p *Platform) CreateDevice(name string) device {
	p.t.Helper()
	var d device
	if code := p.Do("POST", "/api/v1/devices", p.AdminToken, map[string]any{"name": name}, &d); code != 201 {
		p.t.Fatalf("create device: got status %d, want 201", code)
	}
	return d
}

// Enroll creates an enrollment token for the device and enrolls a new
// P-256 key over EST. It returns the TLS certificate for MQTT.
func (p *Platform) Enroll(deviceID string) tls.Certificate {
	p.t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	if code := p.Do("POST", "/api/v1/enrollment-tokens", p.AdminToken, map[string]any{"device_id": deviceID}, &tok); code != 201 {
		p.t.Fatalf("create enrollment token: got status %d, want 201", code)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "whatever"}}, key)
	req, _ := http.NewRequest("POST", p.URL+"/.well-known/est/simpleenroll", bytes.NewReader(est.EncodeCSR(csr)))
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := p.Client.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		p.t.Fatalf("simpleenroll: got status %d (%s), want 200", resp.StatusCode, body)
	}
	certs, err := est.DecodeCertsOnly(body)
	if err != nil || len(certs) == 0 {
		p.t.Fatalf("decode certs-only: %v", err)
	}
	if got := certs[0].Subject.CommonName; got != deviceID {
		p.t.Fatalf("certificate CN: got %q, want %q", got, deviceID)
	}
	return tls.Certificate{Certificate: [][]byte{certs[0].Raw}, PrivateKey: key, Leaf: certs[0]}
}

// DialMQTT connects an MQTT 5 client with the given client certificate
// (none if cert is nil) and client id.
func (p *Platform) DialMQTT(cert *tls.Certificate, clientID string) (*paho.Client, *paho.Connack, error) {
	caPEM, _ := os.ReadFile(filepath.Join(p.Config.Data, "ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := tls.Dial("tcp", p.Broker.Addr().String(), cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := conn.Handshake(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		return nil, ack, err
	}
	p.t.Cleanup(func() { c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return c, ack, nil
}

func TestServe_HealthAndAuth(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))

	resp, err := p.Client.Get(p.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: got %d, want 200", resp.StatusCode)
	}

	var e apiError
	if code := p.Do("GET", "/api/v1/devices", "", nil, &e); code != 401 || e.Error.Code != "unauthorized" {
		t.Fatalf("no token: got %d %q, want 401 unauthorized", code, e.Error.Code)
	}
	if code := p.Do("GET", "/api/v1/devices", "pyl_at_aaaaaaaaaaaaaaaa_"+strings.Repeat("x", 43), nil, &e); code != 401 {
		t.Fatalf("bad token: got %d, want 401", code)
	}
	token, err := os.ReadFile(filepath.Join(p.Config.Data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(token)); got != p.AdminToken || got == "" {
		t.Fatalf("admin.token: got %q, want the printed token", got)
	}
	if code := p.Do("GET", "/api/v1/devices", strings.TrimSpace(string(token)), nil, nil); code != 200 {
		t.Fatalf("admin token: got %d, want 200", code)
	}
	if code := p.Do("GET", "/metrics", "", nil, nil); code != 401 {
		t.Fatalf("metrics without token: got %d, want 401", code)
	}
	req, _ := http.NewRequest("GET", p.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+p.AdminToken)
	resp, err = p.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"go_goroutines", "pylon_mqtt_connected_clients",
		// the runtime's metrics that tell a server short of CPU
		"go_sched_latencies_seconds_bucket", "go_cpu_classes_gc_total_cpu_seconds_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics: %s missing", want)
		}
	}
}

func TestServe_FilePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	MustRunMain(t, dir)
	for name, want := range map[string]os.FileMode{
		".": 0o700, "ca.key": 0o600, "server.key": 0o600, "admin.token": 0o600, "pylon.db": 0o600,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: got mode %o, want %o", name, got, want)
		}
	}
}

func TestServe_DeviceAPIErrors(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	tok := p.AdminToken
	d := p.CreateDevice("sensor-1")
	if len(d.ID) != 16 || d.State != "registered" || d.Labels == nil {
		t.Fatalf("created device: got %+v", d)
	}
	tests := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"bad JSON", "POST", "/api/v1/devices", `{"name":`, 400, "bad_request"},
		{"invalid name", "POST", "/api/v1/devices", map[string]any{"name": ""}, 422, "invalid"},
		{"invalid label", "POST", "/api/v1/devices", map[string]any{"name": "x", "labels": map[string]string{"bad key!": "v"}}, 422, "invalid"},
		{"unknown field", "POST", "/api/v1/devices", `{"name":"y","colour":"red"}`, 422, "invalid"},
		{"duplicate name", "POST", "/api/v1/devices", map[string]any{"name": "sensor-1"}, 409, "conflict"},
		{"too large", "POST", "/api/v1/devices", `{"name":"` + strings.Repeat("a", 2<<20) + `"}`, 413, "too_large"},
		{"not found", "GET", "/api/v1/devices/aaaaaaaaaaaaaaaa", nil, 404, "not_found"},
		{"bad state filter", "GET", "/api/v1/devices?state=sleepy", nil, 422, "invalid"},
		{"resume registered", "POST", "/api/v1/devices/" + d.ID + "/resume", nil, 409, "conflict"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e apiError
			if got := p.Do(tt.method, tt.path, tok, tt.body, &e); got != tt.status || e.Error.Code != tt.code {
				t.Fatalf("got %d %q (%s), want %d %q", got, e.Error.Code, e.Error.Message, tt.status, tt.code)
			}
		})
	}

	var list struct {
		Devices    []device `json:"devices"`
		NextCursor string   `json:"next_cursor"`
	}
	p.CreateDevice("other")
	if code := p.Do("PATCH", "/api/v1/devices/"+d.ID, tok, map[string]any{"labels": map[string]string{"site": "lab"}}, nil); code != 200 {
		t.Fatalf("patch: got %d, want 200", code)
	}
	if code := p.Do("GET", "/api/v1/devices?label=site=lab", tok, nil, &list); code != 200 || len(list.Devices) != 1 || list.Devices[0].ID != d.ID {
		t.Fatalf("label filter: got %d %+v, want just %s", code, list.Devices, d.ID)
	}
	if code := p.Do("GET", "/api/v1/devices?q=OTH", tok, nil, &list); code != 200 || len(list.Devices) != 1 || list.Devices[0].Name != "other" {
		t.Fatalf("name search: got %d %+v, want other", code, list.Devices)
	}
	if code := p.Do("DELETE", "/api/v1/devices/"+d.ID, tok, nil, nil); code != 204 {
		t.Fatalf("delete: got %d, want 204", code)
	}
	if code := p.Do("GET", "/api/v1/devices/"+d.ID, tok, nil, nil); code != 404 {
		t.Fatalf("get deleted: got %d, want 404", code)
	}
}

func TestServe_MQTTRequiresClientCertificate(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	d := p.CreateDevice("sensor-1")
	cert := p.Enroll(d.ID)

	t.Run("no certificate", func(t *testing.T) {
		if _, _, err := p.DialMQTT(nil, d.ID); err == nil {
			t.Fatal("connected without a client certificate")
		}
	})
	t.Run("foreign CA", func(t *testing.T) {
		foreign := selfSignedClientCert(t, d.ID)
		if _, _, err := p.DialMQTT(&foreign, d.ID); err == nil {
			t.Fatal("connected with a certificate of another CA")
		}
	})
	t.Run("wrong client id", func(t *testing.T) {
		_, ack, err := p.DialMQTT(&cert, "someone-else")
		if err == nil || ack == nil || ack.ReasonCode != 0x87 {
			t.Fatalf("got err=%v ack=%+v, want CONNACK 0x87", err, ack)
		}
	})
	t.Run("enrolled device", func(t *testing.T) {
		c, _, err := p.DialMQTT(&cert, d.ID)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		pr, err := c.Publish(ctx, &paho.Publish{Topic: "devices/" + d.ID + "/status", QoS: 1, Payload: []byte("hi")})
		if err != nil || pr.ReasonCode != 0 {
			t.Fatalf("publish: got %v %+v, want success", err, pr)
		}
		waitFor(t, "device online", func() bool {
			var got device
			p.Do("GET", "/api/v1/devices/"+d.ID, p.AdminToken, nil, &got)
			return got.Online && got.State == "active"
		})
	})
}

func TestServe_SuspendDropsSession(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	d := p.CreateDevice("sensor-1")
	cert := p.Enroll(d.ID)
	dropped := make(chan struct{})
	caPEM, _ := os.ReadFile(filepath.Join(p.Config.Data, "ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.Dial("tcp", p.Broker.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnServerDisconnect: func(*paho.Disconnect) { close(dropped) }})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: d.ID, KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code := p.Do("POST", "/api/v1/devices/"+d.ID+"/suspend", p.AdminToken, nil, nil); code != 200 {
		t.Fatalf("suspend: got %d, want 200", code)
	}
	select {
	case <-dropped:
		t.Logf("session dropped %v after the suspend request was sent", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("session not dropped within 1s of suspend")
	}
	if _, ack, err := p.DialMQTT(&cert, d.ID); err == nil || ack == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("reconnect while suspended: got err=%v ack=%+v, want CONNACK 0x87", err, ack)
	}
	if code := p.Do("POST", "/api/v1/devices/"+d.ID+"/resume", p.AdminToken, nil, nil); code != 200 {
		t.Fatalf("resume: got %d, want 200", code)
	}
	if _, _, err := p.DialMQTT(&cert, d.ID); err != nil {
		t.Fatalf("reconnect after resume: %v", err)
	}
}

func TestServe_RestartKeepsState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	p := MustRunMain(t, dir)
	token := p.AdminToken
	d := p.CreateDevice("survivor")
	cert := p.Enroll(d.ID)
	ca1, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err := p.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	p2 := MustRunMain(t, dir)
	if p2.AdminToken != "" {
		t.Fatal("a second admin token was created on restart")
	}
	p2.AdminToken = token
	ca2, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if !bytes.Equal(ca1, ca2) {
		t.Fatal("CA certificate changed across restart")
	}
	var got device
	if code := p2.Do("GET", "/api/v1/devices/"+d.ID, token, nil, &got); code != 200 || got.Name != "survivor" || got.State != "active" {
		t.Fatalf("after restart: got %d %+v", code, got)
	}
	if _, _, err := p2.DialMQTT(&cert, d.ID); err != nil {
		t.Fatalf("device certificate after restart: %v", err)
	}
}

func TestServe_AuditChain(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	d := p.CreateDevice("audited")
	p.Enroll(d.ID)
	var recs struct {
		Records []struct {
			Action string `json:"action"`
			Actor  string `json:"actor"`
		} `json:"records"`
	}
	if code := p.Do("GET", "/api/v1/audit?object="+url.QueryEscape("device:"+d.ID), p.AdminToken, nil, &recs); code != 200 {
		t.Fatalf("audit: got %d", code)
	}
	var actions []string
	for _, r := range recs.Records {
		actions = append(actions, r.Action)
	}
	if got := strings.Join(actions, ","); !strings.Contains(got, "device.create") || !strings.Contains(got, "device.activate") {
		t.Fatalf("audit actions for device: got %s, want device.create and device.activate", got)
	}
	var v struct {
		OK      bool  `json:"ok"`
		Records int64 `json:"records"`
	}
	if code := p.Do("GET", "/api/v1/audit/verify", p.AdminToken, nil, &v); code != 200 || !v.OK || v.Records < 4 {
		t.Fatalf("verify: got %d %+v", code, v)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// selfSignedClientCert returns a client certificate from a CA the platform
// does not know.
func selfSignedClientCert(t *testing.T, cn string) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

var _ = fmt.Sprintf
var _ = base64.StdEncoding

// TestServe_LiveEvents checks that the live feed (SSE, dashboard) hears of
// enrollment, connections and lifecycle changes, not only of readings.
func TestServe_LiveEvents(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := p.Events.Subscribe(ctx, "")
	d := p.CreateDevice("sensor-1")
	next := func(what string) pylon.Event {
		t.Helper()
		for {
			select {
			case e := <-sub.C():
				if e.DeviceID != d.ID {
					t.Fatalf("%s: event for device %q, want %q", what, e.DeviceID, d.ID)
				}
				return e
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: no event within 5s", what)
			}
		}
	}
	cert := p.Enroll(d.ID)
	if e := next("enroll"); e.Type != pylon.EventState || e.State != "active" {
		t.Fatalf("enroll: got %+v, want state active", e)
	}
	if _, _, err := p.DialMQTT(&cert, d.ID); err != nil {
		t.Fatal(err)
	}
	if e := next("connect"); e.Type != pylon.EventConnection || e.Online == nil || !*e.Online {
		t.Fatalf("connect: got %+v, want online", e)
	}
	if code := p.Do("POST", "/api/v1/devices/"+d.ID+"/suspend", p.AdminToken, nil, nil); code != 200 {
		t.Fatalf("suspend: got %d", code)
	}
	got := map[string]bool{}
	for range 2 { // the state change and the dropped session, in either order
		e := next("suspend")
		switch {
		case e.Type == pylon.EventState && e.State == "suspended":
			got["state"] = true
		case e.Type == pylon.EventConnection && e.Online != nil && !*e.Online:
			got["offline"] = true
		default:
			t.Fatalf("suspend: unexpected event %+v", e)
		}
	}
	if !got["state"] || !got["offline"] {
		t.Fatalf("suspend: got %v, want a state and an offline event", got)
	}
}
