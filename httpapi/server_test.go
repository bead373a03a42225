package httpapi_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

func TestError_Statuses(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{"bad request", pylon.Errorf(pylon.EBADREQUEST, "bad"), 400, pylon.EBADREQUEST, "bad"},
		{"unauthorized", pylon.Errorf(pylon.EUNAUTHORIZED, "who"), 401, pylon.EUNAUTHORIZED, "who"},
		{"forbidden", pylon.Errorf(pylon.EFORBIDDEN, "no"), 403, pylon.EFORBIDDEN, "no"},
		{"not found", pylon.Errorf(pylon.ENOTFOUND, "gone"), 404, pylon.ENOTFOUND, "gone"},
		{"conflict", pylon.Errorf(pylon.ECONFLICT, "taken"), 409, pylon.ECONFLICT, "taken"},
		{"too large", pylon.Errorf(pylon.ETOOLARGE, "big"), 413, pylon.ETOOLARGE, "big"},
		{"invalid", pylon.Errorf(pylon.EINVALID, "name: required"), 422, pylon.EINVALID, "name: required"},
		{"rate limited", pylon.Errorf(pylon.ERATELIMITED, "slow down"), 429, pylon.ERATELIMITED, "slow down"},
		{"unavailable", pylon.Errorf(pylon.EUNAVAILABLE, "later"), 503, pylon.EUNAVAILABLE, "later"},
		{"wrapped", fmt.Errorf("find device: %w", pylon.Errorf(pylon.ENOTFOUND, "device not found")), 404, pylon.ENOTFOUND, "device not found"},
		{"plain error", errors.New("database is locked at /var/lib/secret"), 500, pylon.EINTERNAL, "internal error"},
		{"internal code", pylon.Errorf(pylon.EINTERNAL, "disk full at /x"), 500, pylon.EINTERNAL, "internal error"},
		{"unknown code", pylon.Errorf("weird", "leaky detail"), 500, pylon.EINTERNAL, "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			httpapi.Error(w, httptest.NewRequest("GET", "/x", nil), tt.err)
			e := checkError(t, w, tt.wantStatus, tt.wantCode)
			if e.Message != tt.wantMsg {
				t.Errorf("got message %q, want %q", e.Message, tt.wantMsg)
			}
		})
	}
}

func TestInternalErrorIsLoggedNotShown(t *testing.T) {
	f := newFixture(t)
	f.devices.DeviceStatsFn = func(ctx context.Context) (pylon.DeviceStats, error) {
		return pylon.DeviceStats{}, errors.New("sqlite: disk I/O error on /data/pylon.db")
	}
	w := f.serve("GET", "/api/v1/stats", "", f.as(pylon.RoleViewer))
	e := checkError(t, w, 500, pylon.EINTERNAL)
	if e.Message != "internal error" || strings.Contains(w.Body.String(), "sqlite") {
		t.Errorf("got body %q, want only \"internal error\"", w.Body.String())
	}
	log := f.logBuf.String()
	for _, want := range []string{"disk I/O error", "method=GET", "path=/api/v1/stats"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

func TestPanicIs500(t *testing.T) {
	f := newFixture(t)
	f.devices.DeviceStatsFn = nil // the mock panics when called
	w := f.serve("GET", "/api/v1/stats", "", f.as(pylon.RoleViewer))
	e := checkError(t, w, 500, pylon.EINTERNAL)
	if e.Message != "internal error" {
		t.Errorf("got message %q, want %q", e.Message, "internal error")
	}
	if !strings.Contains(f.logBuf.String(), "panic") {
		t.Errorf("panic not logged:\n%s", f.logBuf.String())
	}
}

func TestRouting(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name       string
		method     string
		target     string
		wantStatus int
		wantCode   string
		wantAllow  string
	}{
		{"unknown API path", "GET", "/api/v1/nothing", 404, pylon.ENOTFOUND, ""},
		{"unknown top path", "GET", "/nothing", 404, pylon.ENOTFOUND, ""},
		{"root without UI", "GET", "/", 404, pylon.ENOTFOUND, ""},
		{"unknown EST op", "GET", "/.well-known/est/csrattrs", 404, pylon.ENOTFOUND, ""},
		{"wrong method", "PUT", "/api/v1/devices", 405, "method_not_allowed", "GET, HEAD, POST"},
		{"wrong method on item", "POST", "/api/v1/devices/" + devID, 405, "method_not_allowed", "DELETE, GET, HEAD, PATCH"},
		{"wrong method on healthz", "POST", "/healthz", 405, "method_not_allowed", "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := f.serve(tt.method, tt.target, "", f.as(pylon.RoleAdmin))
			checkError(t, w, tt.wantStatus, tt.wantCode)
			if got := w.Header().Get("Allow"); got != tt.wantAllow {
				t.Errorf("got Allow %q, want %q", got, tt.wantAllow)
			}
		})
	}
}

func TestUI(t *testing.T) {
	f := newFixture(t)
	f.srv.UI = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<h1>dashboard</h1>")
	})
	w := f.serve("GET", "/devices/x", "")
	if w.Code != 200 || w.Body.String() != "<h1>dashboard</h1>" {
		t.Errorf("got %d %q, want the UI", w.Code, w.Body.String())
	}
	if got := w.Header().Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("UI: got X-Content-Type-Options %q, want nosniff", got)
	}
	// API paths never reach the UI.
	checkError(t, f.serve("GET", "/api/v1/nothing", ""), 404, pylon.ENOTFOUND)
}

func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t)
	f.srv.SetReady(true)
	for _, target := range []string{"/healthz", "/api/v1/info", "/api/v1/devices", "/nothing", "/.well-known/est/cacerts"} {
		t.Run(target, func(t *testing.T) {
			w := f.serve("GET", target, "")
			for k, want := range map[string]string{
				"X-Content-Type-Options":    "nosniff",
				"Cache-Control":             "no-store",
				"Strict-Transport-Security": "max-age=63072000",
				"X-Frame-Options":           "DENY",
			} {
				if got := w.Header().Get(k); got != want {
					t.Errorf("got %s %q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestHealth(t *testing.T) {
	f := newFixture(t)
	checkError(t, f.serve("GET", "/healthz", ""), 503, pylon.EUNAVAILABLE)
	f.srv.SetReady(true)
	var h httpapi.Health
	decode(t, f.serve("GET", "/healthz", ""), 200, &h)
	if h.Status != "ok" {
		t.Errorf("got status %q, want ok", h.Status)
	}
	f.srv.SetReady(false)
	checkError(t, f.serve("GET", "/healthz", ""), 503, pylon.EUNAVAILABLE)
}

func TestInfo(t *testing.T) {
	f := newFixture(t)
	var info httpapi.Info
	decode(t, f.serve("GET", "/api/v1/info", ""), 200, &info)
	if info.Version != pylon.Version || info.MQTTAddr != ":8883" || info.MQTTIntegrationAddr != ":8884" {
		t.Errorf("got %+v, want version %q, mqtt_addr :8883 and mqtt_integration_addr :8884", info, pylon.Version)
	}
}

func TestMetrics(t *testing.T) {
	f := newFixture(t)
	w := f.serve("GET", "/metrics", "", f.as(pylon.RoleAdmin))
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		t.Errorf("got %d %q, want 200 text/plain", w.Code, w.Header().Get("Content-Type"))
	}
	checkError(t, f.serve("GET", "/metrics", "", f.as(pylon.RoleOperator)), 403, pylon.EFORBIDDEN)

	f2 := newFixture(t)
	f2.srv.Gatherer = nil
	checkError(t, f2.serve("GET", "/metrics", "", f2.as(pylon.RoleAdmin)), 404, pylon.ENOTFOUND)
}

func TestAuth_Failures(t *testing.T) {
	f := newFixture(t)
	wrongSecret, _, _ := pylon.NewSecret(pylon.APITokenPrefix)
	etSecret, _, _ := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	tests := []struct {
		name      string
		header    string
		wantAudit bool
	}{
		{"no header", "", false},
		{"other scheme", "Basic dXNlcjpwYXNz", false},
		{"empty bearer", "Bearer ", false},
		{"garbage", "Bearer hello", true},
		{"unknown token", "Bearer " + wrongSecret, true},
		{"enrollment token", "Bearer " + etSecret, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.auditList())
			addr := fmt.Sprintf("198.51.100.%d:1234", i+1)
			w := f.serve("GET", "/api/v1/devices", "", withHeader("Authorization", tt.header), fromAddr(addr))
			checkError(t, w, 401, pylon.EUNAUTHORIZED)
			if got := w.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Errorf("got WWW-Authenticate %q, want a Bearer challenge", got)
			}
			audits := f.auditList()[before:]
			if !tt.wantAudit {
				if len(audits) != 0 {
					t.Errorf("got %d audit records, want none", len(audits))
				}
				return
			}
			if len(audits) != 1 {
				t.Fatalf("got %d audit records, want 1", len(audits))
			}
			a := audits[0]
			wantObj := "ip:" + strings.TrimSuffix(addr, ":1234")
			if a.Action != pylon.ActionAuthFailed || a.Actor != "anonymous" || a.Object != wantObj || string(a.Details) != `{"path":"/api/v1/devices"}` {
				t.Errorf("got audit %s %s %s %s, want auth.failed anonymous %s {\"path\":...}", a.Action, a.Actor, a.Object, a.Details, wantObj)
			}
		})
	}
	if strings.Contains(f.logBuf.String(), wrongSecret) {
		t.Error("a token was logged")
	}
	if calls := f.callList(); len(calls) != 0 {
		t.Errorf("services called without authentication: %v", calls)
	}
}

func TestAuth_RateLimit(t *testing.T) {
	f := newFixture(t)
	bad := withHeader("Authorization", "Bearer pyl_at_nope")
	for i := range 10 {
		checkError(t, f.serve("GET", "/api/v1/devices", "", bad), 401, pylon.EUNAUTHORIZED)
		if t.Failed() {
			t.Fatalf("attempt %d", i+1)
		}
	}
	// The 11th attempt is refused, even with a good token, and not audited.
	audits := len(f.auditList())
	w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin))
	checkError(t, w, 429, pylon.ERATELIMITED)
	if got := w.Header().Get("Retry-After"); got != "60" {
		t.Errorf("got Retry-After %q, want 60", got)
	}
	// EST shares the limit.
	checkError(t, f.serve("POST", "/.well-known/est/simpleenroll", "x", bad), 429, pylon.ERATELIMITED)
	if got := len(f.auditList()); got != audits {
		t.Errorf("got %d audit records, want %d: refused attempts are not audited", got, audits)
	}
	// Other clients are not affected; unauthenticated routes neither.
	if w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin), fromAddr("192.0.2.99:1")); w.Code != 200 {
		t.Errorf("other client: got %d, want 200", w.Code)
	}
	if w := f.serve("GET", "/api/v1/info", ""); w.Code != 200 {
		t.Errorf("info: got %d, want 200", w.Code)
	}

	f.advance(45 * time.Second)
	w = f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin))
	checkError(t, w, 429, pylon.ERATELIMITED)
	if got := w.Header().Get("Retry-After"); got != "15" {
		t.Errorf("got Retry-After %q, want 15", got)
	}
	f.advance(15 * time.Second)
	if w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin)); w.Code != 200 {
		t.Errorf("after the window: got %d, want 200", w.Code)
	}
}

func TestAuth_RateLimitSuccessDoesNotCount(t *testing.T) {
	f := newFixture(t)
	for range 20 {
		if w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleViewer)); w.Code != 200 {
			t.Fatalf("got %d, want 200", w.Code)
		}
	}
	bad := withHeader("Authorization", "Bearer nope")
	for range 9 {
		f.serve("GET", "/api/v1/devices", "", bad)
	}
	if w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleViewer)); w.Code != 200 {
		t.Errorf("after 9 failures: got %d, want 200", w.Code)
	}
}

func TestAuth_RateLimitIPv6Network(t *testing.T) {
	f := newFixture(t)
	for i := range 10 {
		addr := fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1)
		checkError(t, f.serve("GET", "/api/v1/devices", "", withHeader("Authorization", "Bearer x"), fromAddr(addr)), 401, pylon.EUNAUTHORIZED)
	}
	checkError(t, f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin), fromAddr("[2001:db8:1:2::ffff]:1")), 429, pylon.ERATELIMITED)
	if w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin), fromAddr("[2001:db8:1:3::1]:1")); w.Code != 200 {
		t.Errorf("another /64: got %d, want 200", w.Code)
	}
}

func TestAuth_RateLimitMemoryIsBounded(t *testing.T) {
	f := newFixture(t)
	f.audit.AppendAuditFn = func(context.Context, *pylon.AuditRecord) error { return nil }
	bad := withHeader("Authorization", "Bearer x")
	for range 10 {
		f.serve("GET", "/api/v1/devices", "", bad)
	}
	checkError(t, f.serve("GET", "/api/v1/devices", "", bad), 429, pylon.ERATELIMITED)
	// 10,000 other clients fail once each: the oldest one is forgotten.
	for i := range 10_000 {
		addr := fmt.Sprintf("10.%d.%d.%d:1", i>>16&0xff, i>>8&0xff, i&0xff)
		f.serve("GET", "/api/v1/devices", "", bad, fromAddr(addr))
	}
	if w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin)); w.Code != 200 {
		t.Errorf("got %d, want 200 once evicted", w.Code)
	}
}

func TestAuth_ServiceErrorIsNotAFailure(t *testing.T) {
	f := newFixture(t)
	f.apiToks.AuthenticateAPITokenFn = func(context.Context, string, []byte) (*pylon.APIToken, error) {
		return nil, errors.New("database down")
	}
	checkError(t, f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleAdmin)), 500, pylon.EINTERNAL)
	if n := len(f.auditList()); n != 0 {
		t.Errorf("got %d audit records, want none", n)
	}
}

func TestAuth_PrincipalInContext(t *testing.T) {
	f := newFixture(t)
	f.serve("GET", "/api/v1/stats", "", f.as(pylon.RoleOperator))
	p := f.lastPrincipal()
	if p.Kind != pylon.PrincipalAPIToken || p.Role != pylon.RoleOperator || !pylon.ValidID(p.ID) {
		t.Errorf("got principal %+v, want the operator's API token", p)
	}
}

// TestRoleMatrix checks every authenticated route against every role.
func TestRoleMatrix(t *testing.T) {
	routes := []struct {
		method, path, body string
		perm               pylon.Permission
		wantStatus         int
	}{
		{"GET", "/api/v1/devices", "", pylon.PermRead, 200},
		{"POST", "/api/v1/devices", `{"name":"d1"}`, pylon.PermOperate, 201},
		{"GET", "/api/v1/devices/" + devID, "", pylon.PermRead, 200},
		{"PATCH", "/api/v1/devices/" + devID, `{"name":"d2"}`, pylon.PermOperate, 200},
		{"DELETE", "/api/v1/devices/" + devID, "", pylon.PermOperate, 204},
		{"POST", "/api/v1/devices/" + devID + "/suspend", "", pylon.PermOperate, 200},
		{"POST", "/api/v1/devices/" + devID + "/resume", "", pylon.PermOperate, 200}, // the device is suspended, see below
		{"POST", "/api/v1/devices/" + devID + "/decommission", "", pylon.PermOperate, 200},
		{"GET", "/api/v1/devices/" + devID + "/connections", "", pylon.PermRead, 200},
		{"GET", "/api/v1/devices/" + devID + "/certificates", "", pylon.PermRead, 200},
		{"GET", "/api/v1/stats", "", pylon.PermRead, 200},
		{"POST", "/api/v1/enrollment-tokens", `{"device_id":"` + devID + `"}`, pylon.PermOperate, 201},
		{"GET", "/api/v1/enrollment-tokens", "", pylon.PermRead, 200},
		{"GET", "/api/v1/enrollment-tokens/" + tokID, "", pylon.PermRead, 200},
		{"DELETE", "/api/v1/enrollment-tokens/" + tokID, "", pylon.PermOperate, 204},
		{"GET", "/api/v1/certificates", "", pylon.PermRead, 200},
		{"GET", "/api/v1/certificates/" + serial, "", pylon.PermRead, 200},
		{"POST", "/api/v1/certificates/" + serial + "/revoke", "", pylon.PermOperate, 200},
		{"POST", "/api/v1/api-tokens", `{"name":"ci","role":"viewer"}`, pylon.PermAdmin, 201},
		{"GET", "/api/v1/api-tokens", "", pylon.PermAdmin, 200},
		{"DELETE", "/api/v1/api-tokens/" + tokID, "", pylon.PermAdmin, 204},
		{"GET", "/api/v1/audit", "", pylon.PermRead, 200},
		{"GET", "/api/v1/audit/verify", "", pylon.PermRead, 200},
		{"GET", "/metrics", "", pylon.PermAdmin, 200},
	}
	for _, rt := range routes {
		for _, role := range []pylon.Role{pylon.RoleAdmin, pylon.RoleOperator, pylon.RoleViewer} {
			t.Run(rt.method+" "+rt.path+" as "+string(role), func(t *testing.T) {
				f := newFixture(t)
				if strings.HasSuffix(rt.path, "/resume") {
					suspendSample(f)
				}
				w := f.serve(rt.method, rt.path, rt.body, f.as(role))
				if role.Allows(rt.perm) {
					if w.Code != rt.wantStatus {
						t.Errorf("got %d, want %d (body %s)", w.Code, rt.wantStatus, w.Body.String())
					}
					return
				}
				checkError(t, w, 403, pylon.EFORBIDDEN)
				if calls := f.callList(); len(calls) != 0 {
					t.Errorf("forbidden request reached the services: %v", calls)
				}
			})
		}
		t.Run(rt.method+" "+rt.path+" anonymous", func(t *testing.T) {
			f := newFixture(t)
			checkError(t, f.serve(rt.method, rt.path, rt.body), 401, pylon.EUNAUTHORIZED)
		})
	}
}

func TestJSONBodies(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
		wantStatus  int
		wantCode    string
		wantMsg     string
	}{
		{"malformed", "application/json", `{"name":`, 400, pylon.EBADREQUEST, "malformed JSON: unexpected end of input"},
		{"syntax error", "application/json", `{"name" "x"}`, 400, pylon.EBADREQUEST, "malformed JSON at byte 9"},
		{"empty", "application/json", ``, 400, pylon.EBADREQUEST, "request body is empty"},
		{"trailing data", "application/json", `{"name":"a"} {"name":"b"}`, 400, pylon.EBADREQUEST, "unexpected data after the JSON object"},
		{"trailing garbage", "application/json", `{"name":"a"}x`, 400, pylon.EBADREQUEST, "unexpected data after the JSON object"},
		{"array", "application/json", `[]`, 400, pylon.EBADREQUEST, "request body must be a JSON object"},
		{"wrong content type", "text/plain", `{"name":"a"}`, 400, pylon.EBADREQUEST, "Content-Type must be application/json"},
		{"unknown field", "application/json", `{"name":"a","x":1}`, 422, pylon.EINVALID, `unknown field "x"`},
		{"server-set field", "application/json", `{"name":"a","state":"active"}`, 422, pylon.EINVALID, `unknown field "state"`},
		{"wrong type", "application/json", `{"name":5}`, 422, pylon.EINVALID, "name: got number, want string"},
		{"wrong label type", "application/json", `{"name":"a","labels":{"k":1}}`, 422, pylon.EINVALID, "labels: got number, want string"},
		{"invalid field", "application/json", `{"name":""}`, 422, pylon.EINVALID, "name: required"},
		{"metadata not an object", "application/json", `{"name":"a","metadata":[1]}`, 422, pylon.EINVALID, "metadata: must be a JSON object"},
		{"too large", "application/json", `{"name":"` + strings.Repeat("a", 1<<20) + `"}`, 413, pylon.ETOOLARGE, "request body larger than 1048576 bytes"},
		{"json with charset", "application/json; charset=utf-8", `{"name":"ok"}`, 201, "", ""},
		{"+json", "application/merge-patch+json", `{"name":"ok"}`, 201, "", ""},
		{"no content type", "", `{"name":"ok"}`, 201, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			opts := []reqOpt{f.as(pylon.RoleOperator)}
			if tt.contentType != "" {
				opts = append(opts, withHeader("Content-Type", tt.contentType))
			}
			w := f.serve("POST", "/api/v1/devices", tt.body, opts...)
			if tt.wantCode == "" {
				if w.Code != tt.wantStatus {
					t.Errorf("got %d, want %d (%s)", w.Code, tt.wantStatus, w.Body.String())
				}
				return
			}
			e := checkError(t, w, tt.wantStatus, tt.wantCode)
			if e.Message != tt.wantMsg {
				t.Errorf("got message %q, want %q", e.Message, tt.wantMsg)
			}
			if calls := f.callList(); len(calls) != 0 {
				t.Errorf("bad request reached the services: %v", calls)
			}
		})
	}
}

// TestTooLargeStreamed sends a body without Content-Length through a real
// connection: the limit still holds.
func TestTooLargeStreamed(t *testing.T) {
	f := newFixture(t)
	url := f.start()
	c := f.client(url, pylon.RoleOperator)
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte(`{"name":"`))
		chunk := []byte(strings.Repeat("a", 64<<10))
		for range 32 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Write([]byte(`"}`))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", url+"/api/v1/devices", pr)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	pr.Close()
	if resp.StatusCode != 413 {
		t.Errorf("got %d, want 413", resp.StatusCode)
	}
}

func TestStartAndShutdown(t *testing.T) {
	f := newFixture(t)
	if f.srv.ListenAddr() != nil {
		t.Errorf("got address %v before Start, want nil", f.srv.ListenAddr())
	}
	url := f.start()
	if err := f.srv.Start(context.Background()); err == nil {
		t.Error("second Start: got nil error, want one")
	}

	// TLS 1.1 is refused; TLS 1.3 is negotiated by default.
	conn, err := tls.Dial("tcp", f.srv.ListenAddr().String(), &tls.Config{RootCAs: f.ca.pool(), MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Error("TLS 1.1: got a connection, want a handshake error")
	}
	conn, err = tls.Dial("tcp", f.srv.ListenAddr().String(), &tls.Config{RootCAs: f.ca.pool()})
	if err != nil {
		t.Fatal(err)
	}
	if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("got TLS version %x, want 1.3", v)
	}
	conn.Close()

	if err := f.client(url, "").Health(context.Background()); err != nil {
		t.Fatalf("health: %v", err)
	}

	// A second server on the same address gets the bind error.
	other := newFixture(t).srv
	other.Addr = f.srv.ListenAddr().String()
	err = other.Start(context.Background())
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Errorf("got %v, want a listen error", err)
	}

	f.closeIdle()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.client(url, "").Health(context.Background()); err == nil {
		t.Error("after Shutdown: got nil error, want a connection error")
	}
}

func TestStart_Incomplete(t *testing.T) {
	tests := map[string]func(s *httpapi.Server){
		"no certificate":  func(s *httpapi.Server) { s.Certificate = tls.Certificate{} },
		"no devices":      func(s *httpapi.Server) { s.Devices = nil },
		"no audit":        func(s *httpapi.Server) { s.Audit = nil },
		"no provisioning": func(s *httpapi.Server) { s.Provisioning = nil },
	}
	for name, breakIt := range tests {
		t.Run(name, func(t *testing.T) {
			s := newFixture(t).srv
			breakIt(s)
			if err := s.Start(context.Background()); err == nil {
				s.Shutdown(context.Background())
				t.Error("got nil error, want one")
			}
			if s.ListenAddr() != nil {
				t.Error("listening after a failed Start")
			}
		})
	}
}

func TestMaxHeaderBytes(t *testing.T) {
	f := newFixture(t)
	url := f.start()
	// HTTP/1.1, so that the server rather than the client enforces the limit.
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: f.ca.pool()},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	req, _ := http.NewRequest("GET", url+"/api/v1/info", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 200<<10))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("got %d, want 431", resp.StatusCode)
	}
}
